//! Fuzz target: message text through the DATA and BDAT reader (see `sluice::fuzz::data`).

fn main() {
    afl::fuzz!(|input: &[u8]| sluice::fuzz::data(input));
}
