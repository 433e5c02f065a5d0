// gate = act(gate) · up, where act is SiLU (SwiGLU) or GELU's tanh approximation (GeGLU)
struct Params {
    len: u32,
    groups_x: u32,
    gelu: u32,      // 0: SiLU, 1: GELU (tanh)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wg.y * p.groups_x + wg.x) * 64u + li;
    if (i >= p.len) {
        return;
    }
    let g = gate[i];
    var a: f32;
    if (p.gelu == 1u) {
        // tanh saturates in f32 beyond |x| = 10; the clamp keeps exp-based tanh from overflowing
        let t = tanh(clamp(0.7978846 * (g + 0.044715 * g * g * g), -10.0, 10.0));
        a = 0.5 * g * (1.0 + t);
    } else {
        a = g / (1.0 + exp(-g));
    }
    gate[i] = a * up[i];
}
