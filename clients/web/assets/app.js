// The PMMTalk browser page: stream a file or the microphone over WS /stream, play the audio, and
// animate a face with the frames, each shown when the audio clock reaches it.
//
// Timing: audio leaves at real-time pace. Playback (of a file; of the face alone for the
// microphone) starts JITTER_MARGIN_S after the first frames arrive: by then the first frame has
// waited for its hop and lookahead and for compute, the most any frame waits, so later frames
// arrive in time unless compute slows by more than the margin. The face shows frame
// round(playbackTime * fps); one not there when its turn comes counts as late, and the last
// frame received stays on screen.

import {
  Microphone,
  NETWORK_RATE_HZ,
  PacedSender,
  chooseClock,
  decodeFile,
  utteranceSamples,
} from "./audio.js";
import { CurvePlot } from "./curves.js";
import { FaceRenderer } from "./face.js";
import { CLOSE_CODE_NAMES, StreamSession } from "./session.js";

const JITTER_MARGIN_S = 0.3; // slack for compute time and network jitter between frame groups
const LAG_WINDOW_FRAMES = 900; // lag figures cover the last 30 s of frames

const $ = (id) => document.getElementById(id);
const ui = {
  info: $("model-info"),
  file: $("audio-file"),
  startFile: $("start-file"),
  startMic: $("start-mic"),
  stop: $("stop"),
  style: $("style"),
  photo: $("face-photo"),
  key: $("api-key"),
  error: $("error"),
  status: $("status"),
  frames: $("fig-frames"),
  lag: $("fig-lag"),
  late: $("fig-late"),
  delay: $("fig-delay"),
  clock: $("fig-clock"),
};

/** What the page knows; also the test hook, `window.pmmtalkState` (read it, never write it). */
const state = {
  status: "idle", // idle | loading | connecting | streaming | finishing | done | stopped | error
  mode: null, // file | mic
  info: null, // the server's /info
  fps: 30,
  names: [],
  framesReceived: 0,
  framesInOrder: true,
  doneFrames: null, // sum of the done messages' frame_count for this run
  expectedFrames: null, // a file's frame count by the protocol's rule, ceil(n * fps / rate)
  lastFrame: null, // the latest frame received, as a plain array
  displayed: { index: -1, jawOpen: 0 },
  lag: { lastMs: null, medianMs: null, p95Ms: null, count: 0 },
  lateFrames: 0,
  playbackDelayS: null,
  clock: null, // audio | wall
  audioSentS: 0,
  errors: [], // {code, message}: the server's error messages, and the page's own
  closes: [], // {code, reason} of every connection close
  frameAt: (i) => (run?.frames[i] ? Array.from(run.frames[i]) : null), // frame i of this run
};
window.pmmtalkState = state;

const face = new FaceRenderer($("face"), []);
const curves = new CurvePlot($("curves"), []);
let audioContext = null;
let run = null; // the current or last session: see beginRun

/** An error the user can fix; its message is shown as is. */
class UserError extends Error {}

function setStatus(status) {
  state.status = status;
  updateButtons();
}

function updateButtons() {
  const active = run !== null && !run.ended;
  ui.startFile.disabled = active || ui.file.files.length === 0;
  ui.startMic.disabled = active;
  ui.stop.disabled = !active;
}

function showError(code, message) {
  state.errors.push({ code, message });
  ui.error.hidden = false;
  ui.error.textContent = state.errors.map((e) => `${e.code}: ${e.message}`).join("\n");
}

function clearErrors() {
  state.errors = [];
  state.closes = [];
  ui.error.hidden = true;
  ui.error.textContent = "";
}

/** A same-origin URL for `path`, with the API key as ?api_key= (browsers cannot set WS headers). */
function serverUrl(path, protocol) {
  const url = new URL(path, document.baseURI);
  if (protocol) url.protocol = protocol;
  const key = ui.key.value.trim();
  if (key) url.searchParams.set("api_key", key);
  return url;
}

async function loadInfo() {
  let response;
  try {
    response = await fetch(serverUrl("info"));
  } catch (error) {
    showError("network", `cannot reach the server (${error.message}); is it running?`);
    return null;
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = body?.error ?? { code: `http_${response.status}`, message: response.statusText };
    const hint = error.code === "unauthorized" ? " (enter the key in the API key field)" : "";
    showError(error.code, error.message + hint);
    ui.info.textContent = "the server's /info is not available";
    return null;
  }
  state.info = body;
  state.fps = body.fps;
  state.names = body.names;
  face.setNames(body.names);
  curves.setNames(body.names);
  const w = body.window;
  ui.info.textContent =
    `${body.model} on ${body.backend} (${body.device}), ${body.fps} fps, ` +
    `frames in groups of ${w.hop_s} s, ${w.lookahead_s} s lookahead`;
  ui.style.replaceChildren(new Option("average", ""));
  for (let i = 0; i < body.styles; i++) ui.style.append(new Option(`style ${i}`, String(i)));
  return body;
}

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new UserError(`cannot read ${file.name}: ${reader.error?.message}`));
    reader.readAsDataURL(file);
  });
}

function ensureAudioContext() {
  // Made inside the click handler: browsers let a context start sounding only after a gesture.
  audioContext ??= new AudioContext({ latencyHint: "interactive" });
  return audioContext;
}

function beginRun(mode) {
  if (run && !run.ended) endRun("stopped");
  clearErrors();
  run = {
    mode,
    session: null,
    clock: null,
    playStart: null, // clock time of audio time 0 on screen (and in the speakers, for a file)
    frames: [], // global index -> Float32Array
    sends: [], // {endS, wallMs}: when the audio up to endS (s) left, in performance.now() ms
    lags: [],
    lastLateIndex: -1,
    stopRequested: false,
    ended: false,
    frozenIndex: null,
  };
  Object.assign(state, {
    mode,
    framesReceived: 0,
    framesInOrder: true,
    doneFrames: null,
    expectedFrames: null,
    lastFrame: null,
    lag: { lastMs: null, medianMs: null, p95Ms: null, count: 0 },
    lateFrames: 0,
    playbackDelayS: null,
    audioSentS: 0,
  });
  setStatus("loading");
  return run;
}

/** Stop everything the run holds; its frames stay for the curves. */
function endRun(status) {
  const current = run;
  if (!current || current.ended) return;
  current.ended = true;
  current.frozenIndex = state.displayed.index;
  current.sender?.stop();
  current.mic?.close();
  try {
    current.source?.stop();
  } catch {
    // a source that never started cannot be stopped; there is nothing to silence
  }
  current.session?.close();
  setStatus(status);
}

function sendChunk(current, chunk, endS) {
  current.session.sendAudio(chunk);
  current.sends.push({ endS, wallMs: performance.now() });
  state.audioSentS = endS;
}

/** Open the stream with the page's style, face and key; resolves with the `ready` message. */
async function connect(current, audio) {
  const start = { type: "start", ...audio, output: "binary" };
  if (ui.style.value !== "") start.style = Number(ui.style.value);
  const photo = ui.photo.files[0];
  if (photo) start.face = await readAsDataUrl(photo);
  setStatus("connecting");
  current.session = new StreamSession({
    url: serverUrl("stream", location.protocol === "https:" ? "wss:" : "ws:"),
    start,
    width: state.names.length,
    callbacks: {
      onFrames: (first, frames, arrivalMs) => onFrames(current, first, frames, arrivalMs),
      onDone: (count) => onDone(current, count),
      onInterrupted: () => endRun("stopped"),
      onServerError: ({ code, message }) => {
        showError(code, message);
        if (current === run) endRun("error");
      },
      onProtocolError: (message) => {
        state.framesInOrder = false;
        showError("client", `the server broke the protocol: ${message}`);
      },
      onClose: ({ code, reason, expected }) => {
        state.closes.push({ code, reason });
        if (expected || current !== run || current.ended) {
          if (state.status === "error") showClose(code, reason);
          return;
        }
        showClose(code, reason);
        endRun("error");
      },
    },
  });
  return current.session.open();
}

/** Start the display clock, and a file's sound with it; a live voice cannot wait, so with the
 * microphone the face trails the speaker by the delay. */
function startPlayback(current) {
  current.playStart = current.clock.now() + JITTER_MARGIN_S;
  state.playbackDelayS = current.playStart - current.audioStart;
  // On the wall clock (sound blocked) the face still moves; the clock figure says why it is mute.
  if (current.playback && current.clock.kind === "audio") {
    current.source = new AudioBufferSourceNode(audioContext, { buffer: current.playback });
    current.source.connect(audioContext.destination);
    current.source.start(current.playStart);
  }
}

function showClose(code, reason) {
  const name = CLOSE_CODE_NAMES[code] ?? "unknown code";
  showError("closed", `the connection closed with code ${code} (${name})${reason ? `: ${reason}` : ""}`);
}

function onFrames(current, first, frames, arrivalMs) {
  if (current !== run) return;
  if (first !== state.framesReceived) state.framesInOrder = false;
  if (current.playStart === null && !current.stopRequested && !current.ended) startPlayback(current);
  let measured = 0;
  frames.forEach((frame, k) => {
    current.frames[first + k] = frame;
    const lag = lagMs(current, (first + k) / state.fps, arrivalMs);
    if (lag !== null) {
      current.lags.push(lag);
      measured += 1;
    }
  });
  state.framesReceived = first + frames.length;
  state.lastFrame = Array.from(frames[frames.length - 1]);
  if (current.lags.length > LAG_WINDOW_FRAMES) current.lags.splice(0, current.lags.length - LAG_WINDOW_FRAMES);
  const sorted = [...current.lags].sort((a, b) => a - b);
  const pick = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  if (sorted.length) {
    state.lag = {
      lastMs: current.lags[current.lags.length - 1],
      medianMs: pick(0.5),
      p95Ms: pick(0.95),
      count: state.lag.count + measured,
    };
  }
}

/** Arrival of the frame at `timeS` minus when the chunk holding that instant was sent. */
function lagMs(current, timeS, arrivalMs) {
  const sends = current.sends;
  let lo = 0;
  let hi = sends.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sends[mid].endS > timeS) hi = mid;
    else lo = mid + 1;
  }
  return lo < sends.length ? arrivalMs - sends[lo].wallMs : null; // ease-out frames: no audio
}

function onDone(current, count) {
  if (current !== run) return;
  state.doneFrames = (state.doneFrames ?? 0) + count;
  if (current.mode === "file") {
    // Playback goes on: the render loop ends the run with the audio.
    current.allFramesIn = true;
    current.session.close();
  } else if (current.stopRequested) {
    endRun("done");
  }
}

async function startFile() {
  const file = ui.file.files[0];
  if (!file) return;
  const context = ensureAudioContext();
  const clockReady = chooseClock(context); // resume() must start within the click
  const current = beginRun("file");
  try {
    if (!state.info && !(await loadInfo())) return endRun("error");
    let decoded;
    try {
      decoded = await decodeFile(context, await file.arrayBuffer());
    } catch (error) {
      throw new UserError(
        `cannot decode ${file.name} (${error.message}); pick an audio file this browser plays: WAV, MP3, OGG, FLAC, ...`,
      );
    }
    if (decoded.pcm.length === 0) throw new UserError(`${file.name} holds no audio samples`);
    current.clock = await clockReady;
    state.clock = current.clock.kind;
    state.expectedFrames = Math.ceil((decoded.pcm.length * state.fps) / NETWORK_RATE_HZ);
    current.expectedFrames = state.expectedFrames;
    await connect(current, { sample_rate: NETWORK_RATE_HZ, encoding: "pcm_s16le", channels: 1 });
    if (current.ended) return;
    current.sender = new PacedSender({
      pcm: decoded.pcm,
      rate: NETWORK_RATE_HZ,
      clock: current.clock,
      send: (chunk, endS) => sendChunk(current, chunk, endS),
      finished: () => current.session.end(),
    });
    current.playback = decoded.playback;
    current.sender.start();
    current.audioStart = current.sender.startedAt;
    setStatus("streaming");
  } catch (error) {
    fail(current, error);
  }
}

async function startMic() {
  const context = ensureAudioContext();
  const clockReady = chooseClock(context);
  const current = beginRun("mic");
  try {
    if (!state.info && !(await loadInfo())) return endRun("error");
    current.clock = await clockReady;
    state.clock = current.clock.kind;
    if (current.clock.kind !== "audio") {
      throw new UserError("the browser keeps audio suspended; click the page once and try again");
    }
    const rate = context.sampleRate;
    current.utteranceLimit = utteranceSamples(rate, state.fps, state.info.limits.max_audio_s);
    current.inUtterance = 0;
    current.sentSamples = 0;
    const waiting = []; // blocks captured while the stream opens
    current.mic = await Microphone.open(context, (block) => {
      if (current.ended) return;
      if (current.session?.ready) sendMicBlock(current, block, rate);
      else waiting.push(block);
    });
    current.audioStart = current.clock.now();
    await connect(current, { sample_rate: rate, encoding: "pcm_f32le", channels: 1 });
    if (current.ended) return;
    waiting.splice(0).forEach((block) => sendMicBlock(current, block, rate));
    setStatus("streaming");
  } catch (error) {
    fail(current, error);
  }
}

/** Send a captured block, ending the utterance (and starting the next) at the length limit. */
function sendMicBlock(current, block, rate) {
  let offset = 0;
  while (offset < block.length) {
    const take = Math.min(block.length - offset, current.utteranceLimit - current.inUtterance);
    current.sentSamples += take;
    current.inUtterance += take;
    sendChunk(current, block.slice(offset, offset + take).buffer, current.sentSamples / rate);
    offset += take;
    if (current.inUtterance === current.utteranceLimit) {
      current.session.end();
      current.inUtterance = 0;
    }
  }
}

function fail(current, error) {
  if (current !== run || current.ended) return;
  if (error instanceof UserError) showError("input", error.message);
  else if (error.name === "NotAllowedError") showError("microphone", "microphone access was denied; allow it for this page");
  else if (error.name === "NotFoundError") showError("microphone", "no microphone was found");
  else if (state.errors.length === 0) showError("client", error.message);
  endRun("error");
}

function stop() {
  const current = run;
  if (!current || current.ended) return;
  current.stopRequested = true;
  if (current.mode === "mic") {
    current.mic?.close();
    current.session?.end(); // flush the voice so far; the run ends with `done`
    setStatus("finishing");
  } else if (current.session && !current.allFramesIn) {
    current.sender?.stop();
    current.session.interrupt(); // barge-in: the run ends with `interrupted`
    endPlayback(current);
    setStatus("finishing");
  } else {
    endRun("stopped");
  }
}

function endPlayback(current) {
  try {
    current.source?.stop();
  } catch {
    // not started yet: nothing is playing
  }
  current.frozenIndex = state.displayed.index;
}

/** The frame for the audio on screen now: null for the neutral face. */
function frameOnScreen() {
  const current = run;
  if (!current || current.playStart === null) return { index: -1, frame: null };
  if (current.frozenIndex !== null) return { index: current.frozenIndex, frame: null };
  const time = current.clock.heardAt(current.clock.now()) - current.playStart;
  const index = Math.round(time * state.fps);
  if (index < 0) return { index, frame: null };
  const total = current.expectedFrames;
  if (total !== undefined && index >= total) {
    if (current.allFramesIn) endRun("done");
    return { index, frame: null };
  }
  const frame = current.frames[index];
  if (frame) return { index, frame };
  if (index > current.lastLateIndex) {
    state.lateFrames += 1;
    current.lastLateIndex = index;
  }
  return { index, frame: current.frames[state.framesReceived - 1] ?? null };
}

const shown = new Map();
function setText(element, text) {
  if (shown.get(element) !== text) {
    shown.set(element, text);
    element.textContent = text;
  }
}

function render() {
  const { index, frame } = frameOnScreen();
  face.draw(frame);
  curves.draw((i) => run?.frames[i], index);
  const jaw = state.names.indexOf("jawOpen");
  state.displayed = { index, jawOpen: frame && jaw >= 0 ? frame[jaw] : 0 };

  const expected = state.expectedFrames ?? state.doneFrames;
  setText(ui.frames, run ? `${state.framesReceived}${expected !== null ? ` / ${expected}` : ""}` : "-");
  const lag = state.lag;
  setText(
    ui.lag,
    lag.count ? `${lag.lastMs.toFixed(0)} ms now, median ${lag.medianMs.toFixed(0)} ms, p95 ${lag.p95Ms.toFixed(0)} ms` : "-",
  );
  setText(ui.late, run ? String(state.lateFrames) : "-");
  setText(ui.delay, state.playbackDelayS !== null ? `${state.playbackDelayS.toFixed(2)} s` : "-");
  setText(ui.clock, state.clock ? (state.clock === "audio" ? "audio (sound on)" : "wall clock (no sound)") : "-");
  setText(ui.status, index >= 0 && frame ? `${state.status}, frame ${index}` : state.status);
  requestAnimationFrame(render);
}

ui.key.value = new URLSearchParams(location.search).get("api_key") ?? "";
ui.file.addEventListener("change", updateButtons);
ui.startFile.addEventListener("click", startFile);
ui.startMic.addEventListener("click", startMic);
ui.stop.addEventListener("click", stop);
ui.key.addEventListener("change", () => {
  clearErrors();
  loadInfo();
});
updateButtons();
loadInfo();
requestAnimationFrame(render);
