//! The `tranche` binary: a thin shell over the library (see `tranche::cli`).

fn main() -> std::process::ExitCode {
    tranche::cli::main()
}
