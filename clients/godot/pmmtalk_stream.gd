extends Node
# A client for the PMMTalk server's WS /stream (docs/protocol.md): it sends one clip of PCM audio,
# paced like a microphone or as fast as the server takes it, and turns the server's messages into
# signals. It polls its socket in _process, so it runs wherever the scene tree runs.

# The server's ready message (a Dictionary: session_id, fps, names, model, hop_s, lookahead_s).
signal session_ready(message)
# Consecutive frames: start_index (int) and frames (an Array of Arrays of len(names) floats).
signal frames_received(start_index, frames)
# The server answered end with done: every frame of the clip has arrived; the socket is closed.
signal finished(frame_count)
# A chunk of audio left: audio_s seconds of the clip have now been sent.
signal audio_sent(audio_s)
# Something went wrong: message says what. The socket is closed; nothing else will be emitted.
signal failed(message)

# Audio per binary message: like a microphone's buffer, small enough to keep latency low.
const CHUNK_S := 0.1
# Fast pacing keeps at most this much audio in flight beyond the frames received. The server needs
# hop_s + lookahead_s (0.7 s by default) ahead of a frame group, so 2 s keeps it busy while the
# socket's send queue stays small; Godot 3.2 cannot report how full that queue is.
const FAST_AHEAD_S := 2.0
# WebSocketClient's buffers: the 64 KiB default holds only a few hundred frames in JSON.
const BUFFER_KB := 1024
const BUFFER_PACKETS := 4096
const BINARY_TAG := "PMF1"
const BINARY_HEADER_BYTES := 10  # tag (4 bytes), start_index (uint32), count (uint16)
const NORMAL_CLOSE := 1000

enum State { IDLE, CONNECTING, STARTING, STREAMING, ENDING, CLOSING, FINISHED, FAILED }

var _client := WebSocketClient.new()
var _state: int = State.IDLE
var _url := ""
var _start := {}
var _pcm := PoolByteArray()
var _chunk_bytes := 0
var _bytes_per_s := 0.0
var _sent_bytes := 0
var _realtime := true
var _t0_usec := 0
var _fps := 30.0
var _width := 0
var _received := 0
var _frame_count := -1
var _error := ""


func _ready() -> void:
	_client.connect("connection_established", self, "_on_connected")
	_client.connect("connection_error", self, "_on_connection_error")
	_client.connect("connection_closed", self, "_on_closed")
	_client.connect("server_close_request", self, "_on_close_request")
	_client.connect("data_received", self, "_on_data")


# Streams one clip to url (ws://HOST:PORT/stream). clip is what wav_file.gd reads: pcm,
# sample_rate, channels, encoding, samples. options: realtime (bool, default true), style (int),
# profile (String), output ("json" or "binary"), api_key (String). Returns OK, or an error code
# when it cannot begin; everything after that comes as signals.
func stream_clip(url: String, clip: Dictionary, options := {}) -> int:
	if _state != State.IDLE:
		return ERR_ALREADY_IN_USE  # one node streams one clip; add another node for the next
	_url = url
	_pcm = clip.pcm
	var frame_bytes: int = _pcm.size() / clip.samples
	_bytes_per_s = float(clip.sample_rate * frame_bytes)
	_chunk_bytes = int(round(clip.sample_rate * CHUNK_S)) * frame_bytes
	_realtime = options.get("realtime", true)
	_start = {
		"type": "start",
		"sample_rate": clip.sample_rate,
		"channels": clip.channels,
		"encoding": clip.encoding,
		"output": options.get("output", "json"),
	}
	# Sent only when asked, so that servers which predate a field still accept the message.
	for key in ["style", "profile"]:
		if options.has(key):
			_start[key] = options[key]
	var headers := PoolStringArray()
	if options.get("api_key", "") != "":
		headers.append("X-API-Key: " + options.api_key)
	_client.set_buffers(BUFFER_KB, BUFFER_PACKETS, BUFFER_KB, BUFFER_PACKETS)
	var err := _client.connect_to_url(url, PoolStringArray(), false, headers)
	if err != OK:
		_state = State.FAILED
		return err
	_state = State.CONNECTING
	return OK


func _process(_delta: float) -> void:
	if _state in [State.IDLE, State.FINISHED, State.FAILED]:
		return
	_client.poll()
	if _state == State.STREAMING:
		_send_audio()


func _send_audio() -> void:
	var peer := _client.get_peer(1)
	peer.set_write_mode(WebSocketPeer.WRITE_MODE_BINARY)
	while _sent_bytes < _pcm.size() and _may_send():
		var last := int(min(_sent_bytes + _chunk_bytes, _pcm.size())) - 1
		if peer.put_packet(_pcm.subarray(_sent_bytes, last)) != OK:
			return  # the send queue is full: try again on the next frame
		_sent_bytes = last + 1
		emit_signal("audio_sent", _sent_bytes / _bytes_per_s)
	if _sent_bytes >= _pcm.size():
		_send_json({"type": "end"})
		_state = State.ENDING


func _may_send() -> bool:
	var sent_s := _sent_bytes / _bytes_per_s
	if _realtime:
		# Chunk k leaves k * CHUNK_S after the first: the pace of audio as it is spoken.
		return sent_s <= (OS.get_ticks_usec() - _t0_usec) / 1e6
	return sent_s < _received / _fps + FAST_AHEAD_S


func _send_json(message: Dictionary) -> void:
	var peer := _client.get_peer(1)
	peer.set_write_mode(WebSocketPeer.WRITE_MODE_TEXT)
	peer.put_packet(JSON.print(message).to_utf8())


func _on_connected(_protocol: String) -> void:
	_state = State.STARTING
	_send_json(_start)


func _on_connection_error() -> void:
	_fail("cannot connect to %s: is the server running, and is the URL ws://HOST:PORT/stream?" % _url)


func _on_close_request(code: int, reason: String) -> void:
	if _error == "" and _state != State.CLOSING:
		_error = "the server closed the connection (code %d: %s)" % [code, reason]


func _on_closed(_was_clean: bool) -> void:
	if _state == State.CLOSING and _error == "":
		_state = State.FINISHED
		emit_signal("finished", _frame_count)
	elif _state != State.FAILED:
		if _error == "":
			_error = "the connection to %s broke before the server sent done" % _url
		_fail(_error)


func _on_data() -> void:
	var peer := _client.get_peer(1)
	while peer.get_available_packet_count() > 0 and _state != State.FAILED:
		var packet := peer.get_packet()
		if peer.was_string_packet():
			_on_message(packet.get_string_from_utf8())
		else:
			_on_binary_frames(packet)


func _on_message(text: String) -> void:
	var parsed := JSON.parse(text)
	if parsed.error != OK or typeof(parsed.result) != TYPE_DICTIONARY:
		_fail("the server sent a message that is not a JSON object: " + text.left(200))
		return
	var message: Dictionary = parsed.result
	match message.get("type", ""):
		"ready":
			_fps = float(message.fps)
			_width = message.names.size()
			_state = State.STREAMING
			_t0_usec = OS.get_ticks_usec()
			emit_signal("session_ready", message)
		"frames":
			_accept_frames(int(message.start_index), message.frames)
		"done":
			_frame_count = int(message.frame_count)
			if _frame_count != _received:
				_fail("done says %d frames but %d arrived" % [_frame_count, _received])
				return
			_state = State.CLOSING
			_client.disconnect_from_host(NORMAL_CLOSE, "done")
		"error":
			# The server closes the socket next; _on_closed reports this message.
			_error = "the server refused the stream: %s: %s" % [message.code, message.message]
		_:
			pass  # a message type newer than this client: the protocol says to skip it


func _on_binary_frames(packet: PoolByteArray) -> void:
	if _width == 0:
		_fail("binary frames arrived before ready")
		return
	var buffer := StreamPeerBuffer.new()
	buffer.data_array = packet
	var tag := packet.subarray(0, 3).get_string_from_ascii() if packet.size() >= 4 else ""
	buffer.seek(4)
	var start_index := buffer.get_u32()
	var count := buffer.get_u16()
	if tag != BINARY_TAG or packet.size() != BINARY_HEADER_BYTES + count * _width * 4:
		_fail("a malformed binary frames message (%d bytes)" % packet.size())
		return
	var frames := []
	for _f in range(count):
		var values := []
		values.resize(_width)
		for j in range(_width):
			values[j] = buffer.get_float()
		frames.append(values)
	_accept_frames(start_index, frames)


func _accept_frames(start_index: int, frames: Array) -> void:
	if start_index != _received:
		_fail("frames arrived out of order: index %d, expected %d" % [start_index, _received])
		return
	_received += frames.size()
	emit_signal("frames_received", start_index, frames)


func _fail(message: String) -> void:
	if _state == State.FAILED:
		return
	_state = State.FAILED
	if _client.get_connection_status() != NetworkedMultiplayerPeer.CONNECTION_DISCONNECTED:
		_client.disconnect_from_host(NORMAL_CLOSE, "client error")
	emit_signal("failed", message)
