fn reduce_sum(v: f32, li: u32) -> f32 {
    // one partial per subgroup (kept by its elected invocation), then a fixed sequential sum
    let s = subgroupAdd(v);
    red[li] = select(0.0, s, subgroupMin(li) == li);
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < 64u; i++) {
        total = total + red[i];
    }
    workgroupBarrier();
    return total;
}
