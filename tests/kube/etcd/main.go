// etcd for the test control plane: etcd's own command line, built from
// the version k8s.io/kubernetes pins in go.mod.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
