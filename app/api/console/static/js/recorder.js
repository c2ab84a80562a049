// Microphone recording with MediaRecorder: start() asks for the microphone, stop() returns
// the clip as one Blob (webm/opus in Chromium, ogg or mp4 elsewhere; the server decodes all).

/** Why this browser cannot record here, or null when it can. */
export function recordingUnavailable() {
  if (!window.isSecureContext) {
    return "Recording needs a secure page (https, or localhost on this machine): "
      + "upload a file instead.";
  }
  if (!navigator.mediaDevices?.getUserMedia || !window.MediaRecorder) {
    return "This browser cannot record audio: upload a file instead.";
  }
  return null;
}

/** The file name extension the server's decoder expects for a recorder's MIME type. */
export function extensionFor(mimeType) {
  if (mimeType.includes("ogg")) return "ogg";
  if (mimeType.includes("mp4")) return "m4a";
  return "webm";
}

export class Recorder {
  constructor() {
    this.stream = null;
    this.recorder = null;
    this.chunks = [];
    this.startedAt = 0;
  }

  get recording() {
    return this.recorder !== null;
  }

  /** Seconds since start() (0 when not recording). */
  elapsed() {
    return this.recording ? (performance.now() - this.startedAt) / 1000 : 0;
  }

  /** Ask for the microphone and start recording; rejects when the user or browser refuses. */
  async start() {
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    this.chunks = [];
    this.recorder = new MediaRecorder(this.stream);
    this.recorder.addEventListener("dataavailable", (event) => {
      if (event.data.size) this.chunks.push(event.data);
    });
    this.recorder.start();
    this.startedAt = performance.now();
  }

  /** Stop, release the microphone and resolve with the recorded clip. */
  stop() {
    const recorder = this.recorder;
    const done = new Promise((resolve) => {
      recorder.addEventListener("stop", () => {
        resolve(new Blob(this.chunks, { type: recorder.mimeType }));
      }, { once: true });
    });
    recorder.stop();
    for (const track of this.stream.getTracks()) track.stop();
    this.recorder = null;
    this.stream = null;
    return done;
  }
}
