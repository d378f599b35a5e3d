fn main() {
    std::process::exit(bypass::run(std::env::args_os().skip(1)));
}
