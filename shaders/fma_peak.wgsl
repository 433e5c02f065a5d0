// FMA-bound microbenchmark for the roofline: every invocation runs `ITERS` steps of eight
// independent vec4 fused multiply-adds (64 FLOPs per step) and writes one value so nothing is
// optimised away.
const ITERS: u32 = 1024u;

@group(0) @binding(0) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let s = f32(gid.x) * 1e-6;
    var a0 = vec4<f32>(s, s + 0.1, s + 0.2, s + 0.3);
    var a1 = a0 + 1.0;
    var a2 = a0 + 2.0;
    var a3 = a0 + 3.0;
    var a4 = a0 + 4.0;
    var a5 = a0 + 5.0;
    var a6 = a0 + 6.0;
    var a7 = a0 + 7.0;
    let m = vec4<f32>(0.99993);
    let c = vec4<f32>(0.00007);
    for (var i = 0u; i < ITERS; i = i + 1u) {
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a4 = fma(a4, m, c);
        a5 = fma(a5, m, c);
        a6 = fma(a6, m, c);
        a7 = fma(a7, m, c);
    }
    let t = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
    out[gid.x] = t.x + t.y + t.z + t.w;
}
