{
  "targets": [
    {
      "target_name": "narwhal_sendfile",
      "sources": ["sendfile.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
