// x *= f, or with `softcap` x = f · tanh(x / f), which squashes x smoothly into (-f, f)
struct Params {
    len: u32,
    groups_x: u32,
    softcap: u32,
    f_bits: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wg.y * p.groups_x + wg.x) * 64u + li;
    if (i >= p.len) {
        return;
    }
    let f = bitcast<f32>(p.f_bits);
    if (p.softcap == 1u) {
        // tanh saturates in f32 beyond |x| = 10; the clamp keeps exp-based tanh from overflowing
        x[i] = f * tanh(clamp(x[i] / f, -10.0, 10.0));
    } else {
        x[i] = x[i] * f;
    }
}
