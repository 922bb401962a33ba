extends MeshInstance
# Plays PMMTalk frames on this mesh's blend shapes, matching the server's channel names (ready's
# names) to the mesh's blend shape names. Channels with no shape of that name are skipped and
# reported once; shapes with no channel keep their weight. Put this script on your own rig's
# MeshInstance and fill name_map where its shape names differ from the server's.

# Emitted after each frame is applied: its index and the weights the mesh now holds, read back
# from the MeshInstance (a Dictionary: blend shape name -> weight).
signal frame_applied(index, weights)

# Server channel name -> this mesh's blend shape name, for rigs whose names differ (for example
# {"jawOpen": "JawOpen"}). Channels not listed are looked up under their own name.
export var name_map := {}
# Play frames on a 30 fps clock (true) or apply each as soon as it arrives (false: tests, tools).
export var realtime := true
# Real-time playback starts this long after the first frames arrive. The server sends a group of
# hop_s worth of frames every hop_s, so a group that comes a little late would otherwise stall
# the face; this margin absorbs that jitter at the price of as much extra latency.
export var jitter_buffer_s := 0.15

var _targets := []  # per server channel: the MeshInstance property of its shape, or "" to skip
var _queue := []  # frames received and not yet applied, in index order: [index, values]
var _fps := 30.0
var _play_t0_usec := -1
var _played := 0


func _ready() -> void:
	if mesh == null:
		mesh = DemoMouth.build()


# Maps the server's channel names onto the mesh. Returns the channel names that have no shape.
func bind(names: Array, fps: float) -> Array:
	_fps = fps
	var shapes := shape_names()
	var skipped := []
	_targets.clear()
	for channel in names:
		var shape: String = name_map.get(channel, channel)
		if shape in shapes:
			_targets.append("blend_shapes/" + shape)
		else:
			_targets.append("")
			skipped.append(channel)
	if not skipped.empty():
		# Once per stream, not per frame: a rig without some shapes is normal, not an error.
		var message := "%d of %d channels have no blend shape on %s and are skipped: %s"
		print(message % [skipped.size(), names.size(), name, PoolStringArray(skipped).join(", ")])
	return skipped


func shape_names() -> Array:
	var names := []
	if mesh is ArrayMesh:
		for i in range(mesh.get_blend_shape_count()):
			names.append(str(mesh.get_blend_shape_name(i)))
	return names


# The weight of every blend shape on the mesh, as the MeshInstance holds it now.
func weights() -> Dictionary:
	var out := {}
	for shape in shape_names():
		out[shape] = get("blend_shapes/" + shape)
	return out


# Queues consecutive frames (one Array of channel values each); the first starts playback.
func push_frames(start_index: int, frames: Array) -> void:
	for j in range(frames.size()):
		_queue.append([start_index + j, frames[j]])
	if _play_t0_usec < 0:
		# The clock starts with the first frames' arrival, so network and compute latency delay
		# the whole animation once instead of making it stutter.
		_play_t0_usec = OS.get_ticks_usec() + int(jitter_buffer_s * 1e6)


func is_idle() -> bool:
	return _queue.empty()


func _process(_delta: float) -> void:
	if _queue.empty():
		return
	var due := _queue.size()
	if realtime:
		var elapsed_s := (OS.get_ticks_usec() - _play_t0_usec) / 1e6
		if elapsed_s < 0:
			return
		due = int(clamp(floor(elapsed_s * _fps) + 1 - _played, 0, _queue.size()))
	for _i in range(due):
		var entry: Array = _queue.pop_front()
		_apply(entry[0], entry[1])


func _apply(index: int, values: Array) -> void:
	for j in range(min(values.size(), _targets.size())):
		if _targets[j] != "":
			set(_targets[j], values[j])
	_played += 1
	emit_signal("frame_applied", index, weights())


# A small mouth built in code: two lips and a chin, with six blend shapes under ARKit names, so
# the name matching above has real shapes to find (and 26 of the 32 channels to skip).
class DemoMouth:
	const COLUMNS := 9
	const LIP_ROWS := [0.3, 0.05, -0.05, -0.35]  # upper outer, upper inner, lower inner, lower outer
	const CHIN_Y := -0.8
	const LIPS := Color(0.8, 0.35, 0.35)
	const SKIN := Color(0.85, 0.67, 0.55)
	const SHAPES := [
		"jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthSmileLeft", "mouthSmileRight"
	]

	static func build() -> ArrayMesh:
		var base := _positions("")
		var normals := PoolVector3Array()
		var colors := PoolColorArray()
		for v in range(base.size()):
			normals.append(Vector3(0, 0, 1))  # facing +z, towards the default camera
			colors.append(SKIN if v >= LIP_ROWS.size() * COLUMNS else LIPS)
		var arrays := []
		arrays.resize(Mesh.ARRAY_MAX)
		arrays[Mesh.ARRAY_VERTEX] = base
		arrays[Mesh.ARRAY_NORMAL] = normals
		arrays[Mesh.ARRAY_COLOR] = colors
		arrays[Mesh.ARRAY_INDEX] = _indices()
		var shapes := []
		var out := ArrayMesh.new()
		for shape in SHAPES:
			out.add_blend_shape(shape)
			var target := []
			target.resize(Mesh.ARRAY_MAX)
			target[Mesh.ARRAY_VERTEX] = _positions(shape)  # Godot 3 takes the shape's positions
			target[Mesh.ARRAY_NORMAL] = normals  # Godot 3 wants every array but the index here
			target[Mesh.ARRAY_COLOR] = colors
			shapes.append(target)
		out.add_surface_from_arrays(Mesh.PRIMITIVE_TRIANGLES, arrays, shapes)
		var material := SpatialMaterial.new()
		material.vertex_color_use_as_albedo = true
		material.vertex_color_is_srgb = true
		material.params_cull_mode = SpatialMaterial.CULL_DISABLED  # lips seen from either side
		out.surface_set_material(0, material)
		return out

	# Vertex positions of the neutral mouth (shape "") or of one blend shape at full weight.
	# Rows are the four lip curves and the chin; x runs from the mouth's right corner (-1) to
	# its left (+1), as the face sees itself.
	static func _positions(shape: String) -> PoolVector3Array:
		var out := PoolVector3Array()
		for row in range(LIP_ROWS.size() + 1):
			for c in range(COLUMNS):
				var x := -1.0 + 2.0 * c / (COLUMNS - 1)
				var bulge := 1.0 - x * x  # 0 at the corners, 1 in the middle
				var y: float = CHIN_Y if row == LIP_ROWS.size() else LIP_ROWS[row] * bulge
				var p := Vector3(x, y, 0.2 * bulge)
				var lower := row >= 2
				match shape:
					"jawOpen":
						if row == LIP_ROWS.size():
							p.y -= 0.45
						elif lower:
							p.y -= 0.45 * bulge
					"mouthClose":
						if row == 1:
							p.y -= 0.05 * bulge
						elif row == 2:
							p.y += 0.05 * bulge
					"mouthFunnel":
						if row < LIP_ROWS.size():
							p.x *= 0.7
							if row == 1:
								p.y += 0.1 * bulge
							elif row == 2:
								p.y -= 0.1 * bulge
							p.z += 0.15 * bulge
					"mouthPucker":
						if row < LIP_ROWS.size():
							p.x *= 0.5
							p.y *= 0.6
							p.z += 0.3 * bulge
					"mouthSmileLeft", "mouthSmileRight":
						var side := 1.0 if shape == "mouthSmileLeft" else -1.0
						var corner := pow(max(x * side, 0.0), 2)
						if row < LIP_ROWS.size():
							p.x += 0.15 * side * corner
							p.y += 0.2 * corner
				out.append(p)
		return out

	static func _indices() -> PoolIntArray:
		var out := PoolIntArray()
		# Quads between the upper lip's rows, the lower lip's rows and the lower lip and chin;
		# rows 1 and 2 are the lips' inner edges, with the mouth opening between them.
		for row in [0, 2, 3]:
			for c in range(COLUMNS - 1):
				var a: int = row * COLUMNS + c
				var b: int = a + COLUMNS
				# Clockwise as seen from the camera: Godot's front faces.
				out.append_array(PoolIntArray([a, a + 1, b, a + 1, b + 1, b]))
		return out
