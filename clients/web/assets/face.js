// A 2D cartoon face on a canvas, driven by ARKit blendshape weights.
//
// ARKit names sides from the character's point of view; the face looks at the viewer, so the
// character's Left is drawn on the viewer's right. Shapes the model does not output (blinks and
// brows are not among the 32 speech shapes) read as 0 and leave that part at rest.

const SKIN = "#f2c7a5";
const SKIN_SHADE = "#d9a27e";
const OUTLINE = "#7a4b35";
const HAIR = "#4a3024";
const LIP = "#c2505a";
const LIP_DARK = "#8e2f3a";
const MOUTH_INSIDE = "#4a1420";
const TEETH = "#fbf8f2";
const TONGUE = "#d8707a";

export class FaceRenderer {
  /** @param {HTMLCanvasElement} canvas  @param {string[]} names the order of a frame's values */
  constructor(canvas, names) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.setNames(names);
  }

  setNames(names) {
    this.index = new Map(names.map((name, i) => [name, i]));
  }

  /** Draw one frame (an array of weights in `names` order; null draws the neutral face). */
  draw(frame) {
    const weight = (name) => {
      const i = this.index.get(name);
      return frame && i !== undefined ? Math.max(0, Math.min(1, frame[i])) : 0;
    };
    const both = (base) => (weight(`${base}Left`) + weight(`${base}Right`)) / 2;
    const g = this.context;
    const { width, height } = this.canvas;
    g.save();
    g.clearRect(0, 0, width, height);
    g.scale(width / 360, height / 400); // the drawing is laid out on a 360 x 400 grid
    const cx = 180;

    const jaw = weight("jawOpen");
    const jawDrop = 34 * jaw;
    const chinX = cx + 14 * (weight("jawLeft") - weight("jawRight"));
    const chinY = 348 + jawDrop;
    const puff = weight("cheekPuff");

    drawHead(g, cx, chinX, chinY, puff);
    drawEyes(g, cx, weight);
    drawNose(g, cx, both("noseSneer"));
    drawCheeks(g, cx, puff, both("cheekSquint"));
    drawMouth(g, {
      x: cx + 12 * (weight("mouthLeft") - weight("mouthRight")) + 0.4 * (chinX - cx),
      y: 268 + 0.3 * jawDrop,
      jaw,
      close: weight("mouthClose"),
      funnel: weight("mouthFunnel"),
      pucker: weight("mouthPucker"),
      rollUpper: weight("mouthRollUpper"),
      rollLower: weight("mouthRollLower"),
      shrugUpper: weight("mouthShrugUpper"),
      shrugLower: weight("mouthShrugLower"),
      upperUp: both("mouthUpperUp"),
      lowerDown: both("mouthLowerDown"),
      press: both("mouthPress"),
      // viewer's left is the character's right
      sides: [
        { sign: -1, smile: weight("mouthSmileRight"), stretch: weight("mouthStretchRight"),
          frown: weight("mouthFrownRight"), dimple: weight("mouthDimpleRight") },
        { sign: 1, smile: weight("mouthSmileLeft"), stretch: weight("mouthStretchLeft"),
          frown: weight("mouthFrownLeft"), dimple: weight("mouthDimpleLeft") },
      ],
    });
    g.restore();
  }
}

function drawHead(g, cx, chinX, chinY, puff) {
  const bulge = 10 * puff;
  g.lineWidth = 2.5;
  g.strokeStyle = OUTLINE;
  for (const sign of [-1, 1]) {
    g.beginPath();
    g.ellipse(cx + sign * 122, 195, 16, 28, 0, 0, 2 * Math.PI);
    g.fillStyle = SKIN_SHADE;
    g.fill();
    g.stroke();
  }
  g.beginPath();
  g.moveTo(cx - 120, 180);
  g.bezierCurveTo(cx - 124, 60, cx + 124, 60, cx + 120, 180);
  g.bezierCurveTo(cx + 122 + bulge, 262, chinX + 74, chinY - 4, chinX, chinY);
  g.bezierCurveTo(chinX - 74, chinY - 4, cx - 122 - bulge, 262, cx - 120, 180);
  g.closePath();
  g.fillStyle = SKIN;
  g.fill();
  g.stroke();
  g.beginPath();
  g.moveTo(cx - 121, 150);
  g.bezierCurveTo(cx - 130, 40, cx + 130, 40, cx + 121, 150);
  g.bezierCurveTo(cx + 90, 92, cx - 20, 118, cx - 121, 150);
  g.fillStyle = HAIR;
  g.fill();
}

function drawEyes(g, cx, weight) {
  const brow = weight("browInnerUp");
  for (const [sign, side] of [[-1, "Right"], [1, "Left"]]) {
    const x = cx + sign * 46;
    const open = Math.max(0.05, 1 - weight(`eyeBlink${side}`) - 0.4 * weight(`cheekSquint${side}`)
      - 0.5 * weight(`eyeSquint${side}`) + 0.3 * weight(`eyeWide${side}`));
    const y = 178;
    g.beginPath();
    g.ellipse(x, y, 21, 12 * open, 0, 0, 2 * Math.PI);
    g.fillStyle = "#ffffff";
    g.fill();
    g.save();
    g.clip();
    g.beginPath();
    g.arc(x, y, 9, 0, 2 * Math.PI);
    g.fillStyle = "#5b3a26";
    g.fill();
    g.beginPath();
    g.arc(x, y, 4, 0, 2 * Math.PI);
    g.fillStyle = "#111111";
    g.fill();
    g.restore();
    g.lineWidth = 2;
    g.strokeStyle = OUTLINE;
    g.beginPath();
    g.ellipse(x, y, 21, 12 * open, 0, 0, 2 * Math.PI);
    g.stroke();

    const raise = 10 * brow + 8 * weight(`browOuterUp${side}`) - 7 * weight(`browDown${side}`);
    const innerX = x - sign * 20;
    const outerX = x + sign * 22;
    g.beginPath();
    g.moveTo(innerX, 154 - 1.3 * raise);
    g.quadraticCurveTo(x, 146 - raise, outerX, 154 - 0.7 * raise);
    g.lineWidth = 5;
    g.lineCap = "round";
    g.strokeStyle = HAIR;
    g.stroke();
  }
}

function drawNose(g, cx, sneer) {
  const lift = 5 * sneer;
  g.lineWidth = 2;
  g.strokeStyle = OUTLINE;
  g.beginPath();
  g.moveTo(cx - 3, 202);
  g.quadraticCurveTo(cx - 9, 220, cx - 16, 228 - lift);
  g.quadraticCurveTo(cx, 238 - lift, cx + 16, 228 - lift);
  g.stroke();
  g.fillStyle = OUTLINE;
  for (const sign of [-1, 1]) {
    g.beginPath();
    g.ellipse(cx + sign * 8, 230 - lift, 4, 2.5, 0, 0, 2 * Math.PI);
    g.fill();
  }
}

function drawCheeks(g, cx, puff, squint) {
  g.fillStyle = `rgba(230, 120, 120, ${0.18 + 0.2 * squint})`;
  for (const sign of [-1, 1]) {
    g.beginPath();
    g.arc(cx + sign * (72 + 8 * puff), 236 - 6 * squint, 18 + 8 * puff, 0, 2 * Math.PI);
    g.fill();
  }
}

/** Control y for a cubic Bezier whose ends sit at `endY` and whose middle should be at `midY`. */
function controlFor(endY, midY) {
  return (4 * midY - endY) / 3;
}

function drawMouth(g, m) {
  const narrow = 0.36 * m.pucker + 0.26 * m.funnel;
  const corners = m.sides.map((s) => ({
    x: m.x + s.sign * 46 * (1 + 0.3 * s.smile + 0.28 * s.stretch + 0.08 * s.dimple - narrow),
    y: m.y - 15 * s.smile + 10 * s.frown + 5 * m.jaw,
  }));
  const [left, right] = corners;
  const cornerY = (left.y + right.y) / 2;

  // The lips part as the jaw opens, unless mouthClose holds them together (an "m" on an open jaw).
  const gap = Math.max(0, m.jaw - 0.9 * m.close);
  const press = 1 - 0.4 * m.press;
  const upperThick = 9 * (1 - 0.7 * m.rollUpper) * press + 5 * m.funnel + 6 * m.pucker;
  const lowerThick = 11 * (1 - 0.7 * m.rollLower) * press + 5 * m.funnel + 7 * m.pucker + 3 * m.shrugLower;
  const upperInner = m.y - 1 - 9 * m.upperUp - 3 * m.funnel - 3 * m.shrugUpper;
  const lowerInner = m.y + 1 + 48 * gap + 9 * m.lowerDown + 14 * m.funnel;
  // A funnel or pucker rounds the opening: its ends pull in from the lip corners.
  const innerHalf = (corner) => (corner.x - m.x) * (1 - 0.5 * m.funnel - 0.35 * m.pucker);
  const innerLeft = { x: m.x + innerHalf(left), y: left.y };
  const innerRight = { x: m.x + innerHalf(right), y: right.y };

  // Both lips as one shape: the outer contour, with a cupid's bow on top.
  const top = upperInner - upperThick;
  const bottom = lowerInner + lowerThick;
  g.beginPath();
  g.moveTo(left.x, left.y);
  g.bezierCurveTo(left.x + 0.45 * (m.x - left.x), controlFor(left.y, top - 3), m.x - 8, top - 3, m.x, top + 1);
  g.bezierCurveTo(m.x + 8, top - 3, right.x - 0.45 * (right.x - m.x), controlFor(right.y, top - 3), right.x, right.y);
  g.bezierCurveTo(right.x - 0.3 * (right.x - m.x), controlFor(right.y, bottom), left.x + 0.3 * (m.x - left.x),
    controlFor(left.y, bottom), left.x, left.y);
  g.closePath();
  g.fillStyle = LIP;
  g.fill();
  g.lineWidth = 1.5;
  g.strokeStyle = LIP_DARK;
  g.stroke();

  const opening = lowerInner - upperInner;
  // Control points level with the ends give the opening round sides: the "O" of a funnel.
  const pull = 0.25 * Math.max(0, 1 - 1.6 * m.funnel);
  const inner = new Path2D();
  inner.moveTo(innerLeft.x, innerLeft.y);
  inner.bezierCurveTo(innerLeft.x + pull * (m.x - innerLeft.x), controlFor(cornerY, upperInner),
    innerRight.x - pull * (innerRight.x - m.x), controlFor(cornerY, upperInner), innerRight.x, innerRight.y);
  inner.bezierCurveTo(innerRight.x - pull * (innerRight.x - m.x), controlFor(cornerY, lowerInner),
    innerLeft.x + pull * (m.x - innerLeft.x), controlFor(cornerY, lowerInner), innerLeft.x, innerLeft.y);
  inner.closePath();
  g.lineWidth = 2;
  g.strokeStyle = LIP_DARK;
  if (opening < 2.5) {
    g.stroke(inner); // closed lips: just the line between them
    return;
  }
  g.save();
  g.clip(inner);
  g.fillStyle = MOUTH_INSIDE;
  g.fill(inner);
  g.fillStyle = TEETH;
  // Rounded (funnelled) lips cover the teeth.
  g.fillRect(m.x - 40, upperInner - 4, 80, (4 + Math.min(8, 0.3 * opening)) * (1 - 0.8 * m.funnel));
  if (gap > 0.15) g.fillRect(m.x - 34, lowerInner - Math.min(6, 0.2 * opening), 68, 8);
  g.beginPath();
  g.ellipse(m.x, lowerInner + 4, 24, Math.min(14, 0.35 * opening), 0, Math.PI, 2 * Math.PI);
  g.fillStyle = TONGUE;
  g.fill();
  g.restore();
  g.stroke(inner);
}
