// Rotates every head of every token's q or k vector with the per-token cos/sin table.
struct Params {
    n: u32,
    heads: u32,
    head_dim: u32,
    half: u32,      // rotated pairs per head
    half_split: u32, // 0: interleaved (2i, 2i+1), 1: half split (i, i + half)
    stride: u32,    // floats per token row
    groups_x: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> v: array<f32>;
@group(0) @binding(2) var<storage, read> cs: array<f32>;  // cos [n][half]
@group(0) @binding(3) var<storage, read> sn: array<f32>;  // sin [n][half]

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wg.y * p.groups_x + wg.x) * 64u + li;
    if (i >= p.n * p.heads * p.half) {
        return;
    }
    let pair = i % p.half;
    let h = (i / p.half) % p.heads;
    let t = i / (p.half * p.heads);
    let base = t * p.stride + h * p.head_dim;
    var ia = base + 2u * pair;
    var ib = ia + 1u;
    if (p.half_split == 1u) {
        ia = base + pair;
        ib = ia + p.half;
    }
    let c = cs[t * p.half + pair];
    let s = sn[t * p.half + pair];
    let a = v[ia];
    let b = v[ib];
    v[ia] = a * c - b * s;
    v[ib] = a * s + b * c;
}
