// Command composecheck loads a Compose file the way `docker compose config` does (compose-go:
// interpolation with defaults, the Compose specification's JSON schema, cross-references such
// as depends_on and build contexts) and prints a one-line summary. Used by
// scripts/deploy-check.sh, where no Compose implementation is installed.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: composecheck COMPOSE_FILE")
		os.Exit(2)
	}
	file, err := filepath.Abs(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	opts, err := cli.NewProjectOptions([]string{file},
		cli.WithOsEnv, cli.WithWorkingDirectory(filepath.Dir(file)), cli.WithConsistency(true),
		cli.WithResolvedPaths(true))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	// Bind-mounted files must exist, or a container gets an empty directory in their place.
	var names []string
	for name, svc := range project.Services {
		names = append(names, name)
		for _, v := range svc.Volumes {
			if v.Type == "bind" {
				if _, err := os.Stat(v.Source); err != nil {
					fmt.Fprintf(os.Stderr, "%s: service %s mounts %s: %v\n", os.Args[1], name, v.Source, err)
					os.Exit(1)
				}
			}
		}
		if svc.Build != nil {
			df := filepath.Join(svc.Build.Context, svc.Build.Dockerfile)
			if _, err := os.Stat(df); err != nil {
				fmt.Fprintf(os.Stderr, "%s: service %s builds from %s: %v\n", os.Args[1], name, df, err)
				os.Exit(1)
			}
		}
	}
	sort.Strings(names)
	fmt.Printf("%s: project %s, services %v: valid\n", os.Args[1], project.Name, names)
}
