"""External toolkits bitalloc drives with their own code: llama.cpp's tools, built once per
machine from a registry package's source tree (:mod:`.llamacpp`), and ggml's quantizers in
its shared library (:mod:`.ggml`)."""
