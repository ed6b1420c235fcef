//! The `stagewise` command: the command line with every builtin kind.

fn main() -> std::process::ExitCode {
    stagewise::cli::main(stagewise::builtin_registry())
}
