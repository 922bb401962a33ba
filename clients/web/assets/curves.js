// Scrolling curves of a few coefficients around the frame on screen. The playhead line is the
// displayed frame; curves right of it are frames that have arrived ahead of their audio.

const SERIES = [
  ["jawOpen", "#d1242f"],
  ["mouthClose", "#8250df"],
  ["mouthFunnel", "#0969da"],
  ["mouthPucker", "#1a7f37"],
  ["mouthSmileLeft", "#bf8700"],
  ["mouthStretchLeft", "#e16f24"],
];
const PAST_FRAMES = 150; // 5 s at 30 fps
const AHEAD_FRAMES = 45;
const LEGEND_PX = 38; // two rows of labels

export class CurvePlot {
  /** @param {HTMLCanvasElement} canvas  @param {string[]} names the order of a frame's values */
  constructor(canvas, names) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.setNames(names);
  }

  setNames(names) {
    this.series = SERIES.filter(([name]) => names.includes(name)).map(([name, color]) => ({
      name,
      color,
      index: names.indexOf(name),
    }));
  }

  /**
   * @param {(i: number) => (Float32Array|undefined)} frameAt frame i, or undefined if absent
   * @param {number} playhead the index of the frame on screen (may be negative before playback)
   */
  draw(frameAt, playhead) {
    const g = this.context;
    const { width, height } = this.canvas;
    const top = LEGEND_PX;
    const plotHeight = height - top - 6;
    const span = PAST_FRAMES + AHEAD_FRAMES;
    const xOf = (i) => ((i - (playhead - PAST_FRAMES)) / span) * width;
    const yOf = (v) => top + (1 - v) * plotHeight;

    g.clearRect(0, 0, width, height);
    g.lineWidth = 1;
    g.strokeStyle = "#eaeef2";
    for (const v of [0, 0.25, 0.5, 0.75, 1]) {
      g.beginPath();
      g.moveTo(0, yOf(v));
      g.lineTo(width, yOf(v));
      g.stroke();
    }
    g.fillStyle = "#8c959f";
    g.font = "10px system-ui, sans-serif";
    g.fillText("1", 2, yOf(1) + 10);
    g.fillText("0", 2, yOf(0) - 2);

    const current = frameAt(playhead);
    let legendX = 4;
    let legendY = 14;
    g.font = "12px system-ui, sans-serif";
    for (const s of this.series) {
      g.lineWidth = 1.6;
      g.strokeStyle = s.color;
      g.beginPath();
      let drawing = false;
      for (let i = Math.floor(playhead - PAST_FRAMES); i <= playhead + AHEAD_FRAMES; i++) {
        const frame = frameAt(i);
        if (!frame) {
          drawing = false;
          continue;
        }
        const x = xOf(i);
        const y = yOf(Math.max(0, Math.min(1, frame[s.index])));
        if (drawing) g.lineTo(x, y);
        else g.moveTo(x, y);
        drawing = true;
      }
      g.stroke();
      const label = current ? `${s.name} ${current[s.index].toFixed(2)}` : s.name;
      const labelWidth = g.measureText(label).width;
      if (legendX + labelWidth > width) {
        legendX = 4;
        legendY += 16;
      }
      g.fillStyle = s.color;
      g.fillText(label, legendX, legendY);
      legendX += labelWidth + 12;
    }

    g.strokeStyle = "#57606a";
    g.setLineDash([4, 3]);
    g.beginPath();
    g.moveTo(xOf(playhead), top);
    g.lineTo(xOf(playhead), height);
    g.stroke();
    g.setLineDash([]);
  }
}
