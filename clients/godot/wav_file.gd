extends Reference
# Reads a WAV file's PCM samples for streaming. Godot 3 imports WAV files as AudioStreamSample
# resources only inside a project (through the editor's importer), so a file named on the command
# line is parsed here instead: the RIFF chunks, the format and the raw sample bytes.

const FORMAT_PCM := 1
const FORMAT_FLOAT := 3
const FORMAT_EXTENSIBLE := 0xFFFE
const RIFF_HEADER_BYTES := 12
const CHUNK_HEADER_BYTES := 8


# Returns {"pcm": PoolByteArray of interleaved little-endian samples, "sample_rate": Hz,
# "channels": n, "encoding": "pcm_s16le" or "pcm_f32le", "samples": sample frames per channel},
# or {"error": a message saying what is wrong with the file and what to do}.
static func read(path: String) -> Dictionary:
	var file := File.new()
	var err := file.open(path, File.READ)
	if err != OK:
		return {"error": "cannot open the WAV file %s (Godot error %d): check the path" % [path, err]}
	var size := file.get_len()
	if size < RIFF_HEADER_BYTES or _tag(file) != "RIFF":
		file.close()
		return {"error": "%s is not a WAV file (no RIFF header)" % path}
	file.get_32()  # the RIFF size, often wrong in files written by streaming tools; unused
	if _tag(file) != "WAVE":
		file.close()
		return {"error": "%s is a RIFF file but not WAVE audio" % path}

	var fmt := {}
	var pcm := PoolByteArray()
	var found_data := false
	while file.get_position() + CHUNK_HEADER_BYTES <= size:
		var id := _tag(file)
		var length := file.get_32()
		var body_at := file.get_position()
		if id == "fmt ":
			fmt = _read_fmt(file, length)
		elif id == "data":
			# Writers that stream to a pipe leave the length at 0xFFFFFFFF: read what is there.
			var available := size - body_at
			if length > available:
				length = available
			pcm = file.get_buffer(length)
			found_data = true
			break
		file.seek(body_at + length + (length & 1))  # chunks are padded to an even length
	file.close()

	if fmt.empty():
		return {"error": "%s has no fmt chunk before its data, so its format is unknown" % path}
	if not found_data:
		return {"error": "%s has no data chunk: it holds no audio" % path}
	var encoding := ""
	if fmt.format == FORMAT_PCM and fmt.bits == 16:
		encoding = "pcm_s16le"
	elif fmt.format == FORMAT_FLOAT and fmt.bits == 32:
		encoding = "pcm_f32le"
	else:
		var found := "%s holds %d-bit samples of WAV format %d" % [path, fmt.bits, fmt.format]
		var fix := "this client sends 16-bit PCM or 32-bit float WAV files: convert it first, "
		fix += "e.g. ffmpeg -i in.wav -c:a pcm_s16le out.wav"
		return {"error": found + "; " + fix}
	if fmt.channels < 1 or fmt.sample_rate <= 0:
		var broken := "%s has a broken fmt chunk (%d channels at %d Hz)"
		return {"error": broken % [path, fmt.channels, fmt.sample_rate]}
	var frame_bytes: int = fmt.channels * fmt.bits / 8
	var samples: int = pcm.size() / frame_bytes
	if samples == 0:
		return {"error": "%s holds no samples: send a WAV with audio in it" % path}
	if pcm.size() != samples * frame_bytes:
		pcm.resize(samples * frame_bytes)  # a truncated last sample frame is dropped
	return {
		"pcm": pcm,
		"sample_rate": fmt.sample_rate,
		"channels": fmt.channels,
		"encoding": encoding,
		"samples": samples,
	}


static func _tag(file: File) -> String:
	return file.get_buffer(4).get_string_from_ascii()


static func _read_fmt(file: File, length: int) -> Dictionary:
	var fmt := {}
	fmt.format = file.get_16()
	fmt.channels = file.get_16()
	fmt.sample_rate = file.get_32()
	file.get_32()  # byte rate
	file.get_16()  # block align
	fmt.bits = file.get_16()
	# WAVE_FORMAT_EXTENSIBLE keeps the real format in the first two bytes of a sub-format GUID.
	if fmt.format == FORMAT_EXTENSIBLE and length >= 40:
		file.get_16()  # extension size
		file.get_16()  # valid bits per sample
		file.get_32()  # channel mask
		fmt.format = file.get_16()
	return fmt


# The clip as a playable stream, or null where Godot 3 cannot play its samples (it plays 8 and
# 16-bit PCM in one or two channels, not float).
static func to_audio_stream(clip: Dictionary) -> AudioStreamSample:
	if clip.encoding != "pcm_s16le" or clip.channels > 2:
		return null
	var stream := AudioStreamSample.new()
	stream.format = AudioStreamSample.FORMAT_16_BITS
	stream.mix_rate = clip.sample_rate
	stream.stereo = clip.channels == 2
	stream.data = clip.pcm
	return stream
