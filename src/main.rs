use std::process::ExitCode;

fn main() -> ExitCode {
    tickerd::cli::main()
}
