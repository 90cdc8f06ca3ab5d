// The test control plane's launcher (standard library only): see main.go.
module tokensync.io/testkube/controlplane

go 1.26.0
