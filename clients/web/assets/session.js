// One WebSocket session of the PMMTalk stream protocol (docs/protocol.md, server/protocol.py).
//
// The session asks for binary frames ("PMF1"): 128 bytes a frame instead of about 300 of JSON.
// It numbers frames globally across utterances, so a caller that splits a long microphone
// stream into several utterances still sees one frame sequence.

const BINARY_TAG = "PMF1";
const BINARY_HEADER_BYTES = 10; // tag (4) + start_index uint32 (4) + count uint16 (2)

/** Names for the close codes a client can meet (protocol codes, then uvicorn's and the net's). */
export const CLOSE_CODE_NAMES = {
  1000: "normal closure",
  1001: "going away: the server is stopping",
  1006: "abnormal closure: the connection broke",
  1007: "invalid payload",
  1008: "policy violation",
  1009: "message too big",
  1011: "internal server error",
  1012: "service restart",
  1013: "try again later: the server is busy",
  4408: "idle timeout",
};

/**
 * Decode one binary frames message.
 * @param {ArrayBuffer} buffer the message
 * @param {number} width values per frame (the length of `names`, 32)
 * @returns {{startIndex: number, frames: Float32Array[]}}
 */
export function decodeBinaryFrames(buffer, width) {
  if (buffer.byteLength < BINARY_HEADER_BYTES) {
    throw new Error(`a binary frames message has at least ${BINARY_HEADER_BYTES} bytes, got ${buffer.byteLength}`);
  }
  const view = new DataView(buffer);
  const tag = String.fromCharCode(...new Uint8Array(buffer, 0, 4));
  if (tag !== BINARY_TAG) throw new Error(`unknown binary frames tag ${JSON.stringify(tag)}`);
  const startIndex = view.getUint32(4, true);
  const count = view.getUint16(8, true);
  const expected = BINARY_HEADER_BYTES + count * width * 4;
  if (buffer.byteLength !== expected) {
    throw new Error(`${count} frames need ${expected} bytes, got ${buffer.byteLength}`);
  }
  const frames = [];
  for (let f = 0; f < count; f++) {
    const frame = new Float32Array(width);
    // DataView, not a Float32Array over the buffer: the values start at byte 10, which is not
    // 4-aligned, and the wire order is little-endian whatever the machine's order.
    for (let j = 0; j < width; j++) {
      frame[j] = view.getFloat32(BINARY_HEADER_BYTES + (f * width + j) * 4, true);
    }
    frames.push(frame);
  }
  return { startIndex, frames };
}

/**
 * A stream session. Callbacks:
 *   onFrames(globalStart, frames, arrivalMs)  frames in order, numbered across utterances
 *   onDone(frameCount)                        an utterance is complete
 *   onInterrupted(frameCount)                 an interrupt was answered
 *   onServerError({code, message})            the server's error message (a close follows)
 *   onProtocolError(message)                  the server broke the protocol (a client bug report)
 *   onClose({code, reason, expected})         the socket closed; expected = we asked for it
 */
export class StreamSession {
  constructor({ url, start, width, callbacks }) {
    this.url = url;
    this.start = start;
    this.width = width;
    this.callbacks = callbacks;
    this.socket = null;
    this.ready = null;
    this.closing = false;
    this.utteranceBase = 0; // global index of the current utterance's frame 0
    this.nextLocal = 0; // the start_index the next frames message must carry
  }

  /** Connect and send `start`; resolves with the `ready` message, rejects with an Error. */
  open() {
    return new Promise((resolve, reject) => {
      let settled = false;
      const socket = new WebSocket(this.url);
      socket.binaryType = "arraybuffer";
      this.socket = socket;
      socket.addEventListener("open", () => socket.send(JSON.stringify(this.start)));
      socket.addEventListener("message", (event) => {
        if (!settled && typeof event.data === "string") {
          const message = JSON.parse(event.data);
          if (message.type === "ready") {
            settled = true;
            this.ready = message;
            resolve(message);
            return;
          }
        }
        this.handle(event.data);
      });
      socket.addEventListener("close", (event) => {
        const info = { code: event.code, reason: event.reason, expected: this.closing };
        this.callbacks.onClose?.(info);
        if (!settled) {
          settled = true;
          const name = CLOSE_CODE_NAMES[event.code] ?? "unknown code";
          reject(new Error(`the connection closed before the server was ready (code ${event.code}, ${name})`));
        }
      });
    });
  }

  handle(data) {
    const cb = this.callbacks;
    if (data instanceof ArrayBuffer) {
      let decoded;
      try {
        decoded = decodeBinaryFrames(data, this.width);
      } catch (error) {
        cb.onProtocolError?.(error.message);
        return;
      }
      if (decoded.startIndex !== this.nextLocal) {
        cb.onProtocolError?.(`frames out of order: expected index ${this.nextLocal}, got ${decoded.startIndex}`);
      }
      this.nextLocal = decoded.startIndex + decoded.frames.length;
      cb.onFrames?.(this.utteranceBase + decoded.startIndex, decoded.frames, performance.now());
      return;
    }
    const message = JSON.parse(data);
    switch (message.type) {
      case "done":
      case "interrupted":
        if (message.frame_count !== this.nextLocal) {
          cb.onProtocolError?.(`${message.type} counts ${message.frame_count} frames, ${this.nextLocal} arrived`);
        }
        this.utteranceBase += message.frame_count;
        this.nextLocal = 0;
        if (message.type === "done") cb.onDone?.(message.frame_count);
        else cb.onInterrupted?.(message.frame_count);
        break;
      case "error":
        cb.onServerError?.({ code: message.code, message: message.message });
        break;
      default:
        // Newer servers may add message types; the protocol asks clients to skip them.
        break;
    }
  }

  /** Send one chunk of raw PCM (an ArrayBuffer or typed array) in the start's encoding. */
  sendAudio(chunk) {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(chunk);
  }

  end() {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify({ type: "end" }));
  }

  interrupt() {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify({ type: "interrupt" }));
  }

  close() {
    this.closing = true;
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000, "client done");
  }
}
