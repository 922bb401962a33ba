// Audio in the browser: decoding a file, the clock the face follows, real-time pacing, the mic.

export const NETWORK_RATE_HZ = 16000; // the model's rate: files are sent at it, as pcm_s16le
export const CHUNK_S = 0.1; // audio per WebSocket message, as a microphone would deliver it

/**
 * Decode an audio file twice: at the playback context's rate (to play it at full quality) and
 * mixed to mono at 16 kHz (to send; the server then has nothing to resample).
 * @returns {Promise<{playback: AudioBuffer, pcm: Int16Array}>}
 */
export async function decodeFile(context, bytes) {
  // decodeAudioData detaches its buffer, so each decode gets its own copy.
  const playback = await context.decodeAudioData(bytes.slice(0));
  const offline = new OfflineAudioContext(1, 1, NETWORK_RATE_HZ);
  const atNetworkRate = await offline.decodeAudioData(bytes.slice(0));
  return { playback, pcm: toInt16(mixToMono(atNetworkRate)) };
}

function mixToMono(buffer) {
  const mono = new Float32Array(buffer.length);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const channel = buffer.getChannelData(c);
    for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / buffer.numberOfChannels;
  }
  return mono;
}

function toInt16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const clipped = Math.max(-1, Math.min(1, samples[i]));
    out[i] = Math.round(clipped * 32767);
  }
  return out;
}

/**
 * The clock that paces sending and picks the displayed frame, in seconds.
 *
 * The audio context's clock when it runs, so the face follows what the speakers play. A browser
 * that blocks sound without a user gesture leaves the context suspended and its clock stopped;
 * the page then falls back to the wall clock and animates without sound.
 */
export async function chooseClock(context, waitMs = 500) {
  await Promise.race([context.resume(), new Promise((resolve) => setTimeout(resolve, waitMs))]);
  if (context.state === "running") {
    return {
      kind: "audio",
      now: () => context.currentTime,
      // What the listener hears now: the context's clock less what is still in the output path.
      heardAt: (time) => time - (context.outputLatency || context.baseLatency || 0),
    };
  }
  return { kind: "wall", now: () => performance.now() / 1000, heardAt: (time) => time };
}

/**
 * Sends a whole clip at real-time pace: chunk k leaves once the clock has passed its end, as it
 * would from a microphone. `send(chunk, audioEndS)` gets each chunk, `finished()` follows the last.
 */
export class PacedSender {
  constructor({ pcm, rate, clock, send, finished }) {
    this.pcm = pcm;
    this.step = Math.round(rate * CHUNK_S);
    this.rate = rate;
    this.clock = clock;
    this.send = send;
    this.finished = finished;
    this.offset = 0;
    this.timer = null;
  }

  start() {
    this.startedAt = this.clock.now();
    // A short timer; every tick sends all chunks that are due, so a throttled timer (a hidden
    // tab) sends late but never falls behind for good.
    this.timer = setInterval(() => this.tick(), 20);
    this.tick();
  }

  tick() {
    const elapsed = this.clock.now() - this.startedAt;
    while (this.offset < this.pcm.length) {
      const end = Math.min(this.offset + this.step, this.pcm.length);
      if (end / this.rate > elapsed) return;
      this.send(this.pcm.slice(this.offset, end).buffer, end / this.rate);
      this.offset = end;
    }
    this.stop();
    this.finished();
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  }
}

/**
 * Captures the microphone through an AudioWorklet, in blocks of CHUNK_S at the context's rate
 * (mono float32). `onChunk(Float32Array)` gets each block.
 */
export class Microphone {
  static async open(context, onChunk) {
    if (!navigator.mediaDevices?.getUserMedia || !context.audioWorklet) {
      throw new Error(
        "the microphone needs a secure page: open it at http://localhost or http://127.0.0.1 " +
          "on the server's machine, or serve it over https",
      );
    }
    const media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: true },
    });
    await context.audioWorklet.addModule(new URL("mic-worklet.js", import.meta.url));
    const source = context.createMediaStreamSource(media);
    const capture = new AudioWorkletNode(context, "pmmtalk-capture", {
      processorOptions: { blockSamples: Math.round(context.sampleRate * CHUNK_S) },
    });
    // A silent path to the speakers keeps the worklet in the rendered graph in every browser,
    // without playing the microphone back.
    const mute = new GainNode(context, { gain: 0 });
    source.connect(capture).connect(mute).connect(context.destination);
    capture.port.onmessage = (event) => onChunk(event.data);
    return new Microphone(media, source, capture, mute);
  }

  constructor(media, source, capture, mute) {
    this.media = media;
    this.nodes = [source, capture, mute];
  }

  close() {
    this.media.getTracks().forEach((track) => track.stop());
    this.nodes.forEach((node) => node.disconnect());
    this.nodes[1].port.onmessage = null;
  }
}

/**
 * The longest utterance a continuous microphone stream sends before an `end`: under the
 * server's limits.max_audio_s, and a whole number of frames long, so that every utterance's
 * ceil(n * fps / rate) frames join the next one's with no gap or overlap on the global clock.
 */
export function utteranceSamples(rate, fps, maxAudioS) {
  const gcd = (a, b) => (b ? gcd(b, a % b) : a);
  const unit = rate / gcd(rate, fps); // samples in a whole number of frames
  const seconds = Math.max(1, Math.min(60, maxAudioS / 2));
  return Math.max(unit, Math.floor((seconds * rate) / unit) * unit);
}
