// Repacked Q5_0: the 5th bits and 4 words of nibbles per block, then f16 scales;
// value = d·(q − 16).
const QW: u32 = 5u;
const Q_MIN: bool = false;
const Q_MID: f32 = 16.0;
