extends Spatial
# The demo scene's driver: streams a WAV file to a PMMTalk server through the Stream node and
# plays the frames on the Face node. Run headless, it takes its settings from the command line,
# can write everything it received to a JSON file, and quits with 0 on done, 1 when the stream
# fails or times out, and 2 for a bad argument or WAV file. README.md shows both ways to run it.

const WavFile = preload("res://wav_file.gd")

const EXIT_OK := 0
const EXIT_FAILED := 1
const EXIT_USAGE := 2
const USAGE := (
	"usage: godot3-server --path clients/godot -- --server ws://HOST:PORT/stream --wav FILE"
	+ " [--out FILE.json] [--fast] [--binary] [--style K] [--profile NAME] [--api-key KEY]"
	+ " [--timeout SECONDS]"
)
const VALUE_FLAGS := ["--server", "--wav", "--out", "--style", "--profile", "--api-key", "--timeout"]
const SWITCHES := ["--fast", "--binary"]
const OPTION_FLAGS := {"--profile": "profile", "--api-key": "api_key"}  # flag -> stream option

# Used when the scene runs without command-line arguments (from the editor).
export var server_url := "ws://127.0.0.1:8000/stream"
# Empty: the repository's samples/hello.wav, two folders above this project.
export var wav_path := ""
# Give up when the server sends nothing (no ready, frames or done) for this long.
export var timeout_s := 30.0

onready var _stream = $Stream  # pmmtalk_stream.gd
onready var _face = $Face  # arkit_face.gd
onready var _speaker: AudioStreamPlayer = $Speaker

var _out_path := ""
var _speech: AudioStreamSample = null  # the clip, played along with the face in real time
var _quit_when_done := false
var _started_usec := 0
var _heard_usec := 0  # when the server last sent something (or the start)
var _finished := false
var _exit_code := -1
# What the stream brought, written to --out: every frame, and every frame as applied to the mesh
# with its time (seconds since start) and the blend shape weights the mesh then held.
var _result := {"frames": [], "applied": [], "sent": []}


func _ready() -> void:
	_started_usec = OS.get_ticks_usec()
	_heard_usec = _started_usec
	var args := _parse_args(Array(OS.get_cmdline_args()))
	if args.has("error"):
		_quit(EXIT_USAGE, args.error + "\n" + USAGE)
		return
	_out_path = args.get("--out", "")
	timeout_s = float(args.get("--timeout", timeout_s))
	var url: String = args.get("--server", server_url)
	var wav: String = args.get("--wav", wav_path)
	if wav == "":
		wav = ProjectSettings.globalize_path("res://").plus_file("../../samples/hello.wav")
	var clip := WavFile.read(wav)
	if clip.has("error"):
		_quit(EXIT_USAGE, clip.error)
		return

	var options := {"realtime": not args.has("--fast")}
	options.output = "binary" if args.has("--binary") else "json"
	if args.has("--style"):
		options["style"] = int(args["--style"])
	for flag in OPTION_FLAGS:
		if args.has(flag):
			options[OPTION_FLAGS[flag]] = args[flag]
	_face.realtime = options.realtime
	_speech = WavFile.to_audio_stream(clip)
	_result.server = url
	_result.wav = {
		"path": wav,
		"sample_rate": clip.sample_rate,
		"channels": clip.channels,
		"encoding": clip.encoding,
		"samples": clip.samples,
	}
	_stream.connect("session_ready", self, "_on_session_ready")
	_stream.connect("frames_received", self, "_on_frames")
	_stream.connect("audio_sent", self, "_on_audio_sent")
	_stream.connect("finished", self, "_on_finished")
	_stream.connect("failed", self, "_on_failed")
	_face.connect("frame_applied", self, "_on_frame_applied")
	var pace := "as fast as the server takes it" if args.has("--fast") else "in real time"
	print("streaming %s (%.2f s) to %s %s" % [wav, clip.samples / float(clip.sample_rate), url, pace])
	var err: int = _stream.stream_clip(url, clip, options)
	if err != OK:
		_quit(EXIT_USAGE, "cannot open %s (Godot error %d): check the URL" % [url, err])


# Flags after Godot's own `--`: {"--flag": value}, true for switches, or {"error": message}.
# With no flags at all the scene uses its exported settings and stays open when done.
func _parse_args(argv: Array) -> Dictionary:
	var args := {}
	var i := 0
	while i < argv.size():
		var flag: String = argv[i]
		i += 1
		if flag == "--":
			continue
		_quit_when_done = true
		if flag in SWITCHES:
			args[flag] = true
		elif flag in VALUE_FLAGS:
			if i >= argv.size():
				return {"error": "%s needs a value" % flag}
			args[flag] = argv[i]
			i += 1
		else:
			return {"error": "unknown argument %s" % flag}
	for path_flag in ["--wav", "--out"]:
		if args.has(path_flag):
			args[path_flag] = _from_launch_dir(args[path_flag])
	if args.has("--style") and not args["--style"].is_valid_integer():
		return {"error": "--style takes a style index (an integer), got %s" % args["--style"]}
	if args.has("--timeout") and not args["--timeout"].is_valid_float():
		return {"error": "--timeout takes seconds, got %s" % args["--timeout"]}
	return args


# Godot changes into the project folder (--path) at start, so a relative path on the command line
# is resolved against the shell's working directory, which PWD still names.
func _from_launch_dir(path: String) -> String:
	var launch_dir := OS.get_environment("PWD")
	if path.is_abs_path() or launch_dir == "":
		return path
	return launch_dir.plus_file(path)


func _process(_delta: float) -> void:
	if _exit_code >= 0:
		return
	if _finished and _face.is_idle():
		var count: int = _result.done.frame_count
		_quit(EXIT_OK, "done: %d frames in %.2f s" % [count, _seconds()])
	elif not _finished and (OS.get_ticks_usec() - _heard_usec) / 1e6 > timeout_s:
		_quit(EXIT_FAILED, "timed out: nothing from the server for %.0f s (--timeout)" % timeout_s)


func _on_session_ready(message: Dictionary) -> void:
	_heard_usec = OS.get_ticks_usec()
	_result.ready = message
	var channels: int = message.names.size()
	print("session %s: model %s, %d channels" % [message.session_id, message.model, channels])
	var skipped: Array = _face.bind(message.names, float(message.fps))
	_result.mesh = {"shapes": _face.shape_names(), "skipped": skipped}


func _on_frames(start_index: int, frames: Array) -> void:
	_heard_usec = OS.get_ticks_usec()
	for j in range(frames.size()):
		_result.frames.append({"index": start_index + j, "values": frames[j]})
	_face.push_frames(start_index, frames)


func _on_frame_applied(index: int, weights: Dictionary) -> void:
	_result.applied.append({"index": index, "t_s": _seconds(), "weights": weights})
	if index == 0 and _face.realtime and _speech != null:
		# The speech starts with the face's first frame, so the two play on one clock.
		_speaker.stream = _speech
		_speaker.play()


func _on_audio_sent(audio_s: float) -> void:
	_result.sent.append({"t_s": _seconds(), "audio_s": audio_s})


func _seconds() -> float:
	return (OS.get_ticks_usec() - _started_usec) / 1e6


func _on_finished(frame_count: int) -> void:
	_result.done = {"frame_count": frame_count}
	_finished = true


func _on_failed(message: String) -> void:
	_quit(EXIT_FAILED, message)


func _quit(code: int, message: String) -> void:
	_exit_code = code
	if code == EXIT_OK:
		print(message)
	else:
		printerr("error: " + message)
		_result.error = message
	if _out_path != "":
		_result.elapsed_s = _seconds()
		_result.final_weights = _face.weights()
		var file := File.new()
		var err := file.open(_out_path, File.WRITE)
		if err != OK:
			printerr("error: cannot write %s (Godot error %d)" % [_out_path, err])
			code = EXIT_FAILED if code == EXIT_OK else code
		else:
			file.store_string(JSON.print(_result))
			file.close()
	if _quit_when_done:
		get_tree().quit(code)
