//! Fuzz target: the PROXY v1/v2 header at the start of a connection (see `sluice::fuzz::proxy_header`).

fn main() {
    afl::fuzz!(|input: &[u8]| sluice::fuzz::proxy_header(input));
}
