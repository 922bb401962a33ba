// Runs on the audio thread: gathers the microphone's 128-sample render blocks into larger
// blocks and posts each to the page, which sends it over the WebSocket.

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.blockSamples = options.processorOptions.blockSamples;
    this.block = new Float32Array(this.blockSamples);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0]?.[0];
    if (channel) {
      let read = 0;
      while (read < channel.length) {
        const take = Math.min(channel.length - read, this.blockSamples - this.filled);
        this.block.set(channel.subarray(read, read + take), this.filled);
        this.filled += take;
        read += take;
        if (this.filled === this.blockSamples) {
          // Transferring the buffer empties this.block (length 0), hence blockSamples.
          this.port.postMessage(this.block, [this.block.buffer]);
          this.block = new Float32Array(this.blockSamples);
          this.filled = 0;
        }
      }
    }
    return true; // keep running while the microphone is connected
  }
}

registerProcessor("pmmtalk-capture", CaptureProcessor);
