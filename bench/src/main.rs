fn main() {
    std::process::exit(bypass_bench::cli::main(
        std::env::args_os().skip(1).collect(),
    ));
}
