// Command render is a stand-in for `helm template` on machines without helm: it renders the chart with
// Go's text/template and the sprig function library, the engine and functions Helm itself uses, plus
// Helm's own include, tpl, toYaml, fromYaml and required, and Helm's values merging (maps merge, null
// deletes).  It does not lint, know the Kubernetes API, or run hooks; tests/test_deploy.py uses it only
// when helm is missing.  It builds offline from Debian packages:
//
//	apt-get install golang-go golang-github-masterminds-sprig-dev golang-github-ghodss-yaml-dev
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o render helm/tools/render/main.go
//	./render helm/mediamoderation [-f values.yaml]... [--set key=value]... [--namespace NS] [--release NAME]
//
// Manifests go to stdout (with "# Source:" comments like helm), NOTES.txt to stderr; exit 1 on an error.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"github.com/ghodss/yaml"
)

type files struct{ root string }

// Get returns a chart file's content, like Helm's .Files.Get ("" when missing).
func (f files) Get(name string) string {
	b, err := os.ReadFile(filepath.Join(f.root, name))
	if err != nil {
		return ""
	}
	return string(b)
}

func coalesce(dst, src map[string]interface{}) map[string]interface{} {
	for k, v := range src {
		if v == nil {
			delete(dst, k)
			continue
		}
		if sm, ok := v.(map[string]interface{}); ok {
			if dm, ok := dst[k].(map[string]interface{}); ok {
				dst[k] = coalesce(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
	return dst
}

func setPath(m map[string]interface{}, path string, val interface{}) {
	parts := strings.Split(path, ".")
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]interface{})
		if !ok {
			next = map[string]interface{}{}
			m[p] = next
		}
		m = next
	}
	m[parts[len(parts)-1]] = val
}

func readYAML(path string) (map[string]interface{}, error) {
	out := map[string]interface{}{}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if err := yaml.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

func run(args []string) error {
	if len(args) < 1 {
		return errors.New("usage: render CHART [-f values.yaml]... [--set key=value]... [--namespace NS] [--release NAME]")
	}
	chart := args[0]
	values, err := readYAML(filepath.Join(chart, "values.yaml"))
	if err != nil {
		return err
	}
	release := map[string]interface{}{"Name": "release", "Namespace": "default", "Service": "Helm",
		"IsInstall": true, "IsUpgrade": false, "Revision": 1}
	for i := 1; i < len(args); i++ {
		if i+1 >= len(args) {
			return fmt.Errorf("%s needs a value", args[i])
		}
		switch args[i] {
		case "-f", "--values":
			over, err := readYAML(args[i+1])
			if err != nil {
				return err
			}
			values = coalesce(values, over)
		case "--set":
			kv := strings.SplitN(args[i+1], "=", 2)
			if len(kv) != 2 {
				return fmt.Errorf("--set %s: expected key=value", args[i+1])
			}
			var v interface{}
			if err := yaml.Unmarshal([]byte(kv[1]), &v); err != nil {
				return err
			}
			setPath(values, kv[0], v)
		case "--namespace", "-n":
			release["Namespace"] = args[i+1]
		case "--release":
			release["Name"] = args[i+1]
		default:
			return fmt.Errorf("unknown argument %s", args[i])
		}
		i++
	}
	meta, err := readYAML(filepath.Join(chart, "Chart.yaml"))
	if err != nil {
		return err
	}
	top := map[string]interface{}{
		"Values":  values,
		"Release": release,
		"Chart": map[string]interface{}{"Name": meta["name"], "Version": meta["version"],
			"AppVersion": meta["appVersion"]},
		"Files": files{chart},
	}

	t := template.New("chart")
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env") // as in Helm
	delete(funcs, "expandenv")
	funcs["toYaml"] = func(v interface{}) string {
		out, err := yaml.Marshal(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(string(out), "\n")
	}
	funcs["fromYaml"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := yaml.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return v, errors.New(msg)
		}
		return v, nil
	}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := t.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		inner, err := t.Clone()
		if err != nil {
			return "", err
		}
		if _, err := inner.New("tpl").Parse(text); err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = inner.ExecuteTemplate(&buf, "tpl", data)
		return buf.String(), err
	}
	t.Funcs(funcs).Option("missingkey=zero")

	paths, err := filepath.Glob(filepath.Join(chart, "templates", "*"))
	if err != nil {
		return err
	}
	sort.Strings(paths)
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if _, err := t.New(filepath.Base(p)).Parse(string(b)); err != nil {
			return err
		}
	}
	var out bytes.Buffer
	for _, p := range paths {
		name := filepath.Base(p)
		if strings.HasPrefix(name, "_") {
			continue
		}
		var buf bytes.Buffer
		if err := t.ExecuteTemplate(&buf, name, top); err != nil {
			return err
		}
		text := strings.TrimSpace(strings.ReplaceAll(buf.String(), "<no value>", ""))
		if name == "NOTES.txt" {
			fmt.Fprintln(os.Stderr, text)
			continue
		}
		if text != "" {
			fmt.Fprintf(&out, "---\n# Source: %s/templates/%s\n%s\n", filepath.Base(chart), name, text)
		}
	}
	_, err = os.Stdout.Write(out.Bytes())
	return err
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}
