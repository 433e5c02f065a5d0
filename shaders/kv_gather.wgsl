// tmp[j] = cache[base + keep[j]]: first half of KV compaction (the copy back is a buffer copy,
// so no slot is read after it was overwritten).
struct Params {
    kv_dim: u32,
    base: u32,
    count: u32,
    groups_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> cache: array<f32>;
@group(0) @binding(2) var<storage, read> keep: array<u32>;
@group(0) @binding(3) var<storage, read_write> tmp: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wg.y * p.groups_x + wg.x) * 64u + li;
    if (i >= p.count * p.kv_dim) {
        return;
    }
    let j = i / p.kv_dim;
    let d = i % p.kv_dim;
    tmp[i] = cache[(p.base + keep[j]) * p.kv_dim + d];
}
