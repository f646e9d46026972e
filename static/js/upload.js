// The upload page: tus-js-client with resume (after a dropped connection, and after a reload
// through the fingerprint it keeps in localStorage), a progress bar with speed and time left, and cancel.
(function () {
  var root = document.getElementById("uploader");
  if (!root) return;
  var $ = function (id) { return document.getElementById(id); };
  var archiveInput = $("archive-input"), folderInput = $("folder-input");
  var startButton = $("start-button"), pauseButton = $("pause-button"), cancelButton = $("cancel-button");
  var bar = $("progress-bar"), progress = $("progress"), text = $("progress-text"), errorBox = $("upload-error");
  var upload = null, source = null, samples = [];

  function human(bytes) {
    var units = ["B", "KB", "MB", "GB", "TB"], i = 0;
    while (bytes >= 1000 && i < units.length - 1) { bytes /= 1000; i++; }
    return bytes.toFixed(i ? 1 : 0) + " " + units[i];
  }
  function duration(seconds) {
    if (!isFinite(seconds)) return "…";
    seconds = Math.round(seconds);
    var h = Math.floor(seconds / 3600), m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
    return (h ? h + " h " : "") + (h || m ? m + " min " : "") + s + " s";
  }
  function showError(message) {
    errorBox.textContent = message;
    errorBox.classList.remove("d-none");
  }
  function setProgress(sent, total) {
    var pct = total ? Math.floor(sent / total * 100) : 0;
    bar.style.width = pct + "%";
    bar.textContent = pct + " %";
    progress.setAttribute("aria-valuenow", pct);
    var now = performance.now();
    samples.push([now, sent]);
    while (samples.length > 2 && now - samples[0][0] > 5000) samples.shift();
    var first = samples[0], speed = now > first[0] ? (sent - first[1]) / ((now - first[0]) / 1000) : 0;
    text.textContent = human(sent) + " of " + human(total) + " · " + human(speed) + "/s · " +
      (speed > 0 ? duration((total - sent) / speed) + " left" : "time left: estimating");
  }
  function chosen() {
    if (folderInput.files && folderInput.files.length) {
      var packed = window.packFolderAsTar(folderInput.files);
      return {blob: packed.blob, name: packed.name, type: "application/x-tar"};
    }
    var file = archiveInput.files && archiveInput.files[0];
    return file ? {blob: file, name: file.name, type: file.type || "application/octet-stream"} : null;
  }
  function serverMessage(error) {
    // The server answers errors in the API's one format: {"error": {"code", "message", "fields"}}.
    var response = error && error.originalResponse;
    var body = response && response.getBody && response.getBody();
    if (body) {
      try {
        var parsed = JSON.parse(body);
        if (parsed && parsed.error && parsed.error.message) return parsed.error.message;
      } catch (ignored) { /* not JSON: show it as it is */ }
      return body;
    }
    return (error && error.message) || String(error);
  }

  archiveInput.addEventListener("change", function () { if (archiveInput.files.length) folderInput.value = ""; startButton.disabled = !chosen(); });
  folderInput.addEventListener("change", function () { if (folderInput.files.length) archiveInput.value = ""; startButton.disabled = !chosen(); });

  startButton.addEventListener("click", function () {
    if (upload) { upload.start(); startButton.disabled = true; pauseButton.classList.remove("d-none"); return; }
    source = chosen();
    if (!source) return;
    errorBox.classList.add("d-none");
    samples = [];
    upload = new tus.Upload(source.blob, {
      endpoint: root.dataset.endpoint,
      chunkSize: 16 * 1024 * 1024,
      // Keep retrying through a dropped connection: about ten minutes in all.
      retryDelays: [0, 1000, 3000, 5000, 10000, 20000, 30000, 60000, 60000, 60000, 60000, 60000, 60000, 60000, 60000],
      metadata: {submission: root.dataset.submission, filename: source.name, filetype: source.type},
      headers: {"X-CSRFToken": root.dataset.csrf},
      fingerprint: function (blob) {
        return Promise.resolve(["llmec", root.dataset.submission, source.name, blob.size].join("-"));
      },
      storeFingerprintForResuming: true,
      removeFingerprintOnSuccess: true,
      onProgress: setProgress,
      onShouldRetry: function (err) {
        var status = err.originalResponse ? err.originalResponse.getStatus() : 0;
        // 4xx answers are final (except a busy lock and an offset the server can tell us again).
        return !status || status >= 500 || status === 409 || status === 423 || status === 460;
      },
      onError: function (error) {
        showError("Upload stopped: " + serverMessage(error) + " Press Upload to resume from where it stopped.");
        startButton.disabled = false;
        startButton.textContent = "Resume";
        pauseButton.classList.add("d-none");
      },
      onSuccess: function () {
        setProgress(source.blob.size, source.blob.size);
        text.textContent = "Upload complete (" + human(source.blob.size) + "). Validating…";
        cancelButton.classList.add("d-none");
        pauseButton.classList.add("d-none");
        setTimeout(function () { window.location.href = root.dataset.detailUrl; }, 800);
      },
    });
    startButton.disabled = true;
    pauseButton.classList.remove("d-none");
    cancelButton.classList.remove("d-none");
    upload.findPreviousUploads().then(function (previous) {
      if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
      upload.start();
    });
  });

  pauseButton.addEventListener("click", function () {
    if (!upload) return;
    upload.abort();
    startButton.disabled = false;
    startButton.textContent = "Resume";
    pauseButton.classList.add("d-none");
    text.textContent += " · paused";
  });

  cancelButton.addEventListener("click", function () {
    if (!upload || !window.confirm("Cancel this submission and delete what was uploaded?")) return;
    upload.abort(true).then(function () {
      window.location.href = root.dataset.listUrl;
    }).catch(function (error) { showError("Could not cancel: " + serverMessage(error)); });
  });
})();
