// Streaming-read microbenchmark for the roofline: a grid-stride loop XORs every vec4<u32> of
// `src` into one word per invocation, so every byte is read once and nothing is optimised away.
// The XOR of `out` equals the XOR of `src`, which the test checks.

@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * 256u;
    var acc = vec4<u32>(0u);
    for (var i = gid.x; i < arrayLength(&src); i = i + stride) {
        acc = acc ^ src[i];
    }
    out[gid.x] = acc.x ^ acc.y ^ acc.z ^ acc.w;
}
