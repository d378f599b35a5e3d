fn main() {
    std::process::exit(bypass_load::cli::main(std::env::args_os().collect()));
}
