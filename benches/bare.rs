//! A bare may_minihttp server, the yardstick for `benches/intake.rs`: it reads a request's
//! body and answers 200 with a short JSON body, nothing else, with the relay's coroutine pool
//! and stack settings (`src/main.rs`). Intake figures are reported as `relay / bare server`
//! measured in the same run, which holds still while other work on the machine comes and goes.
//!
//! Not a benchmark by itself: `benches/run.sh` builds it with `cargo bench --no-run --bench
//! bare` and passes its path to the intake bench, which starts it as
//! `bare --port N` (127.0.0.1 only). Run without `--port`, it exits at once.

use std::io::{self, Read};

use may_minihttp::{HttpServer, HttpService, Request, Response};

/// As `COROUTINE_STACK_WORDS` and `COROUTINE_POOL` in src/main.rs.
const COROUTINE_STACK_WORDS: usize = 0x4000;
const COROUTINE_POOL: usize = 10;

#[derive(Clone)]
struct Bare;

impl HttpService for Bare {
    fn call(&mut self, req: Request, rsp: &mut Response) -> io::Result<()> {
        // Every body is read, as the relay reads it; the relay caps the size, wrk's are small.
        io::copy(&mut req.body().take(1 << 20), &mut io::sink())?;
        rsp.header("Content-Type: application/json");
        rsp.body("{\"status\":\"ok\"}");
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(port) = args.iter().position(|a| a == "--port").and_then(|i| args.get(i + 1)) else {
        eprintln!("bare: started without --port (by cargo bench?): nothing to do");
        return;
    };
    may::config().set_pool_capacity(COROUTINE_POOL).set_stack_size(COROUTINE_STACK_WORDS);
    match HttpServer(Bare).start(format!("127.0.0.1:{port}")) {
        Ok(server) => {
            let _ = server.join();
        }
        Err(e) => {
            eprintln!("bare: listening on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    }
}
