//! bypass-bench: criterion benches of the core's hot functions and the end-to-end comparison
//! of bypass against its peers (nginx, gunicorn + WhiteNoise, static-web-server).
