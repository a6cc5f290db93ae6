// A recording's waveform on a canvas: peaks computed once at publish (or decoded once for a
// peer's recording), bookmarks as marks on it, the playing position, and tap-to-seek.
"use strict";

class Waveform {
  constructor(canvas, audio, data) {
    this.canvas = canvas;
    this.audio = audio;
    this.data = data;
    audio.addEventListener("timeupdate", () => this.draw());
    audio.addEventListener("seeked", () => this.draw());
    canvas.addEventListener("click", (event) => {
      const rect = canvas.getBoundingClientRect();
      const at = ((event.clientX - rect.left) / rect.width) * data.duration;
      audio.currentTime = Math.max(0, Math.min(data.duration, at));
      if (audio.paused) audio.play().catch(() => {});
    });
    new ResizeObserver(() => this.draw()).observe(canvas);
  }

  draw() {
    const canvas = this.canvas, data = this.data;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width) canvas.width = width;
    if (canvas.height !== height) canvas.height = height;
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, width, height);
    const peaks = data.peaks;
    const loudest = Math.max(1, ...peaks);
    const played = data.duration ? this.audio.currentTime / data.duration : 0;
    const mid = height / 2;
    for (let x = 0; x < width; x++) {
      // The loudest peak of the buckets under this pixel column.
      const from = Math.floor((x / width) * peaks.length);
      const to = Math.max(from + 1, Math.floor(((x + 1) / width) * peaks.length));
      let peak = 0;
      for (let i = from; i < to && i < peaks.length; i++) peak = Math.max(peak, peaks[i]);
      const h = Math.max(1, (peak / loudest) * (height - 2) / 2);
      ctx.fillStyle = x / width < played ? "#2a6f97" : "#9bb7c9";
      ctx.fillRect(x, mid - h, 1, 2 * h);
    }
    ctx.fillStyle = "#e07a1f";
    for (const mark of data.bookmarks || []) {
      const x = Math.round((mark.at / (data.duration || 1)) * width);
      ctx.fillRect(Math.min(width - 2 * ratio, x), 0, 2 * ratio, height);
    }
    canvas.dataset.drawn = "1";
  }
}

// Fetch and draw when the canvas scrolls into view (a page of twenty stays light).
function lazyWaveform(canvas, audio, recordingId) {
  const load = async () => {
    try {
      const data = await rp.api(`/api/recordings/${recordingId}/waveform`, { noLogin: true });
      new Waveform(canvas, audio, data).draw();
    } catch (e) {
      canvas.dataset.drawn = "error";
      canvas.title = e.message;
    }
  };
  const seen = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) { seen.disconnect(); load(); }
  });
  seen.observe(canvas);
}
