//! `shardtally-worker`: see `shardtally_worker::cli` for the commands.

fn main() -> std::process::ExitCode {
    shardtally_worker::cli::main()
}
