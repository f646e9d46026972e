// Packs the files of a chosen folder as one POSIX ustar archive, lazily: the result is a Blob made of
// 512-byte headers and the File objects themselves, so the browser reads each file from disk only
// when tus sends that slice. Nothing is compressed (safetensors do not compress) and nothing is copied.
(function () {
  var enc = new TextEncoder();

  function put(block, offset, length, text) {
    var bytes = enc.encode(text);
    if (bytes.length > length) throw new Error("tar field too long: " + text);
    block.set(bytes, offset);
  }
  function octal(value, length) {
    return value.toString(8).padStart(length - 1, "0") + "\0";
  }
  function putSize(block, size) {
    if (size < 8589934592) { put(block, 124, 12, octal(size, 12)); return; }
    // GNU base-256 for files of 8 GiB and more.
    block[124] = 0x80;
    for (var i = 135; i > 124; i--) { block[i] = size % 256; size = Math.floor(size / 256); }
  }
  function splitName(path) {
    if (enc.encode(path).length <= 100) return ["", path];
    var parts = path.split("/");
    for (var i = 1; i < parts.length; i++) {
      var prefix = parts.slice(0, i).join("/"), name = parts.slice(i).join("/");
      if (enc.encode(prefix).length <= 155 && enc.encode(name).length <= 100) return [prefix, name];
    }
    throw new Error("File path too long for a tar archive: " + path);
  }
  function header(path, size, mtime) {
    var block = new Uint8Array(512), names = splitName(path);
    put(block, 0, 100, names[1]);
    put(block, 100, 8, "0000644\0");
    put(block, 108, 8, "0000000\0");
    put(block, 116, 8, "0000000\0");
    putSize(block, size);
    put(block, 136, 12, octal(Math.floor(mtime / 1000), 12));
    put(block, 148, 8, "        ");
    put(block, 156, 1, "0");
    put(block, 257, 6, "ustar\0");
    put(block, 263, 2, "00");
    put(block, 345, 155, names[0]);
    var sum = 0;
    for (var i = 0; i < 512; i++) sum += block[i];
    put(block, 148, 8, sum.toString(8).padStart(6, "0") + "\0 ");
    return block;
  }

  // files: a FileList from <input webkitdirectory>; returns {blob, name, count}.
  window.packFolderAsTar = function (files) {
    var parts = [], list = Array.prototype.slice.call(files);
    list.sort(function (a, b) { return (a.webkitRelativePath || a.name) < (b.webkitRelativePath || b.name) ? -1 : 1; });
    list.forEach(function (file) {
      var path = file.webkitRelativePath || file.name;
      parts.push(header(path, file.size, file.lastModified || Date.now()));
      parts.push(file);
      var pad = (512 - (file.size % 512)) % 512;
      if (pad) parts.push(new Uint8Array(pad));
    });
    parts.push(new Uint8Array(1024));
    var top = list.length ? (list[0].webkitRelativePath || list[0].name).split("/")[0] : "model";
    return {blob: new Blob(parts, {type: "application/x-tar"}), name: top + ".tar", count: list.length};
  };
})();
