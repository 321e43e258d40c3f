use std::process::ExitCode;

/// mimalloc: faster than glibc malloc on the hit path's many small
/// allocations, and it returns memory instead of fragmenting per-thread arenas
/// under long mixed load (the soak's RSS stays flat).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tickerd::cli::main()
}
