// The classifier page: shrink the photo in the browser, upload it, draw the top-k as bars.
// Plain JavaScript, no framework and nothing fetched from outside this server.
"use strict";

(function () {
  const TOP_K = 5;
  const JPEG_QUALITY = 0.9;
  // The photo sent has its shorter side at twice the model's input (so every resize mode,
  // squash, crop or pad, still shrinks it on the server, with room for the area filter) and its
  // longer side at least 256 px; the server resizes to the input anyway, so more pixels buy
  // nothing. The input size comes from /api/model.
  let inputSize = 224;
  const MIN_LONG_SIDE = 256;

  const $ = (id) => document.getElementById(id);

  function setState(state, message) {
    document.body.dataset.state = state;
    if (message !== undefined) $("status").textContent = message;
  }

  // unreadable: the server could not read the photo (it says why), rather than a failure
  function showError(message, unreadable) {
    $("error").textContent = message;
    $("error").hidden = false;
    setState("error", unreadable ? "The photo could not be read; try another photo."
                                 : "Something went wrong; try another photo.");
  }

  function formatBytes(bytes) {
    if (bytes < 1024) return bytes + " B";
    if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(1) + " kB";
    return (bytes / (1024 * 1024)).toFixed(1) + " MB";
  }

  async function loadModel() {
    try {
      const response = await fetch("api/model");
      const info = await response.json();
      if (!response.ok) throw new Error(info.error || response.statusText);
      inputSize = info.image_size;
      // the run's folder name and what it was fine-tuned from; never a file name like best.keras
      $("run-name").textContent = info.name;
      $("model-origin").textContent = info.origin || "";
      document.title = info.title + " · workbench";
      const parts = [info.backbone && !info.origin ? "backbone " + info.backbone : null,
                     info.recipe ? "recipe " + info.recipe : null,
                     "input " + info.image_size + " × " + info.image_size + " px",
                     info.classes + " classes"];
      const metrics = info.metrics || {};
      if (typeof metrics.test_accuracy === "number") {
        parts.push("test accuracy " + (100 * metrics.test_accuracy).toFixed(1) + "%");
      }
      $("model-details").textContent = parts.filter(Boolean).join(" · ");
      $("class-count").textContent = info.classes;
      $("classes").textContent = info.labels.join(", ");
      setState("ready");
    } catch (error) {
      showError("Could not read the model's description: " + error.message);
    }
  }

  function decode(file) {
    return new Promise((resolve, reject) => {
      const image = new Image();
      const address = URL.createObjectURL(file);
      image.onload = () => { URL.revokeObjectURL(address); resolve(image); };
      image.onerror = () => { URL.revokeObjectURL(address); reject(new Error("not an image")); };
      image.src = address;  // the browser applies the EXIF orientation when it draws
    });
  }

  function canvasOf(source, width, height) {
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d");
    context.imageSmoothingEnabled = true;
    context.imageSmoothingQuality = "high";
    context.drawImage(source, 0, 0, width, height);
    return canvas;
  }

  // Whether a JPEG or PNG file ends as the format says it must. One cut short (a photo still
  // being copied, a broken download) still draws in the browser, its missing part grey, and
  // shrinking it would send a whole, wrong photo; it goes as it is, so the server says why it
  // cannot be read. Other formats are left to the browser.
  async function complete(file) {
    const bytes = new Uint8Array(await file.arrayBuffer());
    if (bytes[0] === 0xFF && bytes[1] === 0xD8) return jpegComplete(bytes);
    const png = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A];
    if (png.every((value, index) => bytes[index] === value)) {
      const end = String.fromCharCode(...bytes.subarray(bytes.length - 8, bytes.length - 4));
      return end === "IEND";  // the last chunk
    }
    return true;
  }

  // Walks the JPEG's segments to its end-of-image marker (FFD9). In the compressed data after
  // a start-of-scan, FF is followed by 00 (a stuffed byte) or a restart marker, so the next
  // other marker ends the scan.
  function jpegComplete(bytes) {
    let i = 2;
    while (i + 1 < bytes.length) {
      if (bytes[i] !== 0xFF) return false;
      const marker = bytes[i + 1];
      if (marker === 0xD9) return true;
      if (marker === 0xFF) { i += 1; continue; }  // a fill byte
      if ((marker >= 0xD0 && marker <= 0xD7) || marker === 0x01) { i += 2; continue; }
      if (i + 3 >= bytes.length) return false;
      i += 2 + ((bytes[i + 2] << 8) | bytes[i + 3]);
      if (marker === 0xDA) {
        while (i + 1 < bytes.length && !(bytes[i] === 0xFF && bytes[i + 1] !== 0x00 &&
               !(bytes[i + 1] >= 0xD0 && bytes[i + 1] <= 0xD7))) i += 1;
      }
    }
    return false;
  }

  // Shrinks the photo (see inputSize above), keeping its aspect ratio, in halving
  // steps (each averages 2x2 pixels, close to the server's area resize); encodes a JPEG.
  async function shrink(file) {
    const image = await decode(file);
    const width = image.naturalWidth, height = image.naturalHeight;
    const scale = Math.min(1, Math.max(2 * inputSize / Math.min(width, height),
                                       MIN_LONG_SIDE / Math.max(width, height)));
    const target = [Math.max(1, Math.round(width * scale)),
                    Math.max(1, Math.round(height * scale))];
    // first draw at target x 2^n (at most the photo's size, so no huge canvas), then halve
    let factor = 1;
    while (target[0] * factor * 2 <= width && target[1] * factor * 2 <= height) factor *= 2;
    let canvas = canvasOf(image, target[0] * factor, target[1] * factor);
    while (factor > 1) {
      factor /= 2;
      canvas = canvasOf(canvas, target[0] * factor, target[1] * factor);
    }
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", JPEG_QUALITY));
    if (!blob) throw new Error("the browser could not encode the photo");
    return { blob, width, height, sentWidth: target[0], sentHeight: target[1] };
  }

  function render(predictions) {
    const list = $("predictions");
    list.replaceChildren();
    for (const { label, probability } of predictions) {
      const percent = (100 * probability).toFixed(1) + "%";
      const item = document.createElement("li");
      item.className = "prediction";
      item.dataset.label = label;
      item.dataset.probability = probability;
      const row = document.createElement("div");
      row.className = "row";
      const name = document.createElement("span");
      name.className = "label";
      name.textContent = label;
      const value = document.createElement("span");
      value.className = "percent";
      value.textContent = percent;
      row.append(name, value);
      const track = document.createElement("div");
      track.className = "track";
      track.setAttribute("aria-hidden", "true");
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.width = Math.max(0, Math.min(100, 100 * probability)) + "%";
      track.append(bar);
      item.append(row, track);
      list.append(item);
    }
  }

  // The heatmap (a PNG at the photo's aspect) laid over the photo, under the bars.
  function showExplanation(explanation) {
    $("explanation").hidden = !explanation;
    if (!explanation) return;
    $("explained-photo").src = $("photo").src;
    $("heatmap").src = explanation.heatmap;
    $("explanation-caption").textContent = "Where the model looked for " + explanation.label +
      " (Grad-CAM: red is where the evidence for it lies).";
  }

  async function classify(file) {
    $("error").hidden = true;
    $("explanation").hidden = true;
    $("predictions").replaceChildren();
    if ($("photo").src) URL.revokeObjectURL($("photo").src);
    $("photo").src = URL.createObjectURL(file);
    $("result").hidden = false;
    setState("busy", "Shrinking the photo…");
    let upload = file, caption, sent = "";
    try {
      if (!(await complete(file))) throw new Error("it looks cut short");
      const small = await shrink(file);
      upload = small.blob.size < file.size ? small.blob : file;
      if (upload !== file) sent = small.sentWidth + "x" + small.sentHeight;
      caption = "Sent " + formatBytes(upload.size) + " (" + small.sentWidth + " × " +
        small.sentHeight + " JPEG) instead of " + formatBytes(file.size) + " (" + small.width +
        " × " + small.height + ").";
    } catch (error) {  // the browser cannot read it: let the server say why
      caption = "Sent the file as it is (" + formatBytes(file.size) + "): " + error.message + ".";
    }
    $("sizes").textContent = caption;
    $("sizes").dataset.originalBytes = file.size;
    $("sizes").dataset.sentBytes = upload.size;
    $("sizes").dataset.sentSize = sent;  // "WxH" of the shrunk JPEG; empty: the file as it is
    const form = new FormData();
    form.append("file", upload, upload === file ? (file.name || "photo") : "photo.jpg");
    setState("busy", "Classifying…");
    const started = performance.now();
    const explain = $("explain").checked ? "&explain=1" : "";
    const response = await fetch("api/predict?top_k=" + TOP_K + explain,
                                 { method: "POST", body: form });
    let answer;
    try {
      answer = await response.json();
    } catch (error) {
      throw new Error("the server answered " + response.status + " " + response.statusText);
    }
    if (!response.ok) {  // a reason: the server could not read the photo
      const error = new Error(answer.error || response.statusText);
      error.unreadable = Boolean(answer.reason);
      throw error;
    }
    render(answer.predictions);
    showExplanation(answer.explanation);
    $("result").scrollIntoView({ block: "nearest" });  // in view if the page was scrolled away
    const top = answer.predictions[0];
    setState("done", "Most likely " + top.label + " (" + (100 * top.probability).toFixed(1) +
      "%), answered in " + Math.round(performance.now() - started) + " ms.");
  }

  for (const id of ["camera", "file"]) {
    $(id).addEventListener("change", (event) => {
      const file = event.target.files[0];
      if (!file) return;
      classify(file).catch((error) => showError(error.message, error.unreadable));
    });
  }
  loadModel();
})();
