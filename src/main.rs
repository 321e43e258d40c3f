use std::process::ExitCode;

/// jemalloc instead of glibc's malloc: the request path allocates on one
/// thread and frees on another (tokio workers, Lua threads), which glibc
/// serialises on arena locks; jemalloc's thread caches keep that cheap while
/// returning idle memory to the OS (see README "Performance").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    tickerd::cli::main()
}
