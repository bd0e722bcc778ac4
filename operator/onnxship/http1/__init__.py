"""HTTP/1.1 on llhttp (httptools), shared by the inference ports of `onnxship route` and
`onnxship serve`, which may not import each other."""
