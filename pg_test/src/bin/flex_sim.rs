//! The Flex simulator as a standalone server: `flex_sim [BIND] [TOKEN]`, defaults
//! `127.0.0.1:8089` and `sim-token`. Flex paths under /f5/api, the control API under /_sim.

fn main() {
    let mut args = std::env::args().skip(1);
    let bind = args.next().unwrap_or_else(|| "127.0.0.1:8089".into());
    let token = args.next().unwrap_or_else(|| "sim-token".into());
    let sim = flex_sync_pg_test::sim::server::spawn(&bind, &token).unwrap_or_else(|e| {
        eprintln!("flex_sim: cannot listen on {bind}: {e}");
        std::process::exit(2)
    });
    println!("flex_sim listening on {}", sim.base_url());
    loop {
        std::thread::park();
    }
}
