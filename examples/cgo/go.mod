module example.com/pyroscope-cgo

go 1.21
