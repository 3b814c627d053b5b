// tiltfile_check evaluates a Tiltfile without Tilt: go.starlark.net (the interpreter Tilt embeds)
// with stand-ins for the Tilt built-ins the inferscale Tiltfile uses. Each stand-in takes exactly
// the parameters of Tilt's API (internal/tiltfile/api/__init__.py of tilt-dev/tilt), so a
// misspelt or unknown argument fails as it would in Tilt; local() really runs its command and
// read_yaml_stream() really reads. After evaluation it checks what Tilt checks when it assembles
// resources (every built image is used by a workload or, with match_in_env_vars, an env var; every
// k8s_resource names a workload; resource_deps exist; custom-resource objects have their CRD), and
// writes the YAML handed to k8s_yaml to -out so a test can dry-run it against an API server.
//
//	tiltfile_check -f Tiltfile [-out objects.yaml] [-- --example=openai-best-of-n]
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"go.starlark.net/syntax"
	"gopkg.in/yaml.v3"
)

// blob is Tilt's Blob: text that is content, not a path.
type blob string

func (b blob) String() string        { return string(b) }
func (b blob) Type() string          { return "blob" }
func (b blob) Freeze()               {}
func (b blob) Truth() starlark.Bool  { return len(b) > 0 }
func (b blob) Hash() (uint32, error) { return starlark.String(b).Hash() }

type image struct {
	Ref, Context, Dockerfile string
	Only                     []string
	MatchInEnvVars           bool
}

type resourceCfg struct {
	Workload, NewName string
	ResourceDeps      []string
	PortForwards      []string
	Objects           []string
}

type state struct {
	dir            string
	args           []string
	images         []image
	objects        []map[string]any
	resources      []resourceCfg
	localResources map[string][]string // name -> resource_deps
	kinds          map[string]bool     // k8s_kind workloads
	configStrings  map[string]bool
	watched        []string
}

func (s *state) path(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(s.dir, p)
}

// --- value conversion ------------------------------------------------------------------------------

func toStarlark(v any) (starlark.Value, error) {
	switch x := v.(type) {
	case nil:
		return starlark.None, nil
	case string:
		return starlark.String(x), nil
	case bool:
		return starlark.Bool(x), nil
	case int:
		return starlark.MakeInt(x), nil
	case int64:
		return starlark.MakeInt64(x), nil
	case float64:
		return starlark.Float(x), nil
	case []any:
		l := make([]starlark.Value, 0, len(x))
		for _, e := range x {
			sv, err := toStarlark(e)
			if err != nil {
				return nil, err
			}
			l = append(l, sv)
		}
		return starlark.NewList(l), nil
	case map[string]any:
		d := starlark.NewDict(len(x))
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			sv, err := toStarlark(x[k])
			if err != nil {
				return nil, err
			}
			if err := d.SetKey(starlark.String(k), sv); err != nil {
				return nil, err
			}
		}
		return d, nil
	}
	return nil, fmt.Errorf("cannot convert %T", v)
}

func fromStarlark(v starlark.Value) (any, error) {
	switch x := v.(type) {
	case starlark.NoneType:
		return nil, nil
	case starlark.String:
		return string(x), nil
	case blob:
		return string(x), nil
	case starlark.Bool:
		return bool(x), nil
	case starlark.Int:
		i, ok := x.Int64()
		if !ok {
			return nil, errors.New("integer too large")
		}
		return i, nil
	case starlark.Float:
		return float64(x), nil
	case *starlark.List, starlark.Tuple:
		it := starlark.Iterate(x)
		defer it.Done()
		out := []any{}
		var e starlark.Value
		for it.Next(&e) {
			g, err := fromStarlark(e)
			if err != nil {
				return nil, err
			}
			out = append(out, g)
		}
		return out, nil
	case *starlark.Dict:
		out := map[string]any{}
		for _, item := range x.Items() {
			k, ok := item[0].(starlark.String)
			if !ok {
				return nil, fmt.Errorf("map key %s is not a string", item[0])
			}
			g, err := fromStarlark(item[1])
			if err != nil {
				return nil, err
			}
			out[string(k)] = g
		}
		return out, nil
	}
	return nil, fmt.Errorf("cannot serialize a %s", v.Type())
}

func decodeStream(data []byte) ([]any, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []any
	for {
		var doc any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
}

func encodeStream(docs []any) (string, error) {
	var b strings.Builder
	for i, d := range docs {
		if i > 0 {
			b.WriteString("---\n")
		}
		out, err := yaml.Marshal(d)
		if err != nil {
			return "", err
		}
		b.Write(out)
	}
	return b.String(), nil
}

// stringList accepts a string or a list of strings (Tilt's Union[str, List[str]]).
func stringList(v starlark.Value) ([]string, error) {
	if v == nil || v == starlark.None {
		return nil, nil
	}
	if s, ok := starlark.AsString(v); ok {
		return []string{s}, nil
	}
	g, err := fromStarlark(v)
	if err != nil {
		return nil, err
	}
	l, ok := g.([]any)
	if !ok {
		return nil, fmt.Errorf("want a string or a list of strings, got %s", v.Type())
	}
	out := make([]string, 0, len(l))
	for _, e := range l {
		s, ok := e.(string)
		if !ok {
			return nil, fmt.Errorf("want strings, got %T", e)
		}
		out = append(out, s)
	}
	return out, nil
}

// --- built-ins ---------------------------------------------------------------------------------------

func (s *state) builtins() starlark.StringDict {
	b := func(name string, fn func(*starlark.Thread, *starlark.Builtin, starlark.Tuple, []starlark.Tuple) (starlark.Value, error)) *starlark.Builtin {
		return starlark.NewBuiltin(name, fn)
	}
	none := starlark.None
	triggerAuto := starlark.String("TRIGGER_MODE_AUTO")
	triggerManual := starlark.String("TRIGGER_MODE_MANUAL")

	predeclared := starlark.StringDict{
		"TRIGGER_MODE_AUTO":   triggerAuto,
		"TRIGGER_MODE_MANUAL": triggerManual,
		"struct":              starlark.NewBuiltin("struct", starlarkstruct.Make),
		"fail": b("fail", func(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var msg string
			if err := starlark.UnpackArgs(fn.Name(), args, kw, "msg", &msg); err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("fail(): %s", msg)
		}),
		"blob": b("blob", func(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var c string
			if err := starlark.UnpackArgs(fn.Name(), args, kw, "contents", &c); err != nil {
				return nil, err
			}
			return blob(c), nil
		}),
		"allow_k8s_contexts": b("allow_k8s_contexts", func(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var c starlark.Value
			return none, starlark.UnpackArgs(fn.Name(), args, kw, "contexts", &c)
		}),
		"watch_file": b("watch_file", func(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var p string
			if err := starlark.UnpackArgs(fn.Name(), args, kw, "file_path", &p); err != nil {
				return nil, err
			}
			if _, err := os.Stat(s.path(p)); err != nil {
				return nil, fmt.Errorf("watch_file: %w", err)
			}
			s.watched = append(s.watched, p)
			return none, nil
		}),
		"local": b("local", func(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var command, commandBat, stdin starlark.Value
			var quiet, echoOff bool
			var env *starlark.Dict
			var dir string
			if err := starlark.UnpackArgs(fn.Name(), args, kw, "command", &command, "quiet?", &quiet,
				"command_bat?", &commandBat, "echo_off?", &echoOff, "env?", &env, "dir?", &dir, "stdin?", &stdin); err != nil {
				return nil, err
			}
			var cmd *exec.Cmd
			if str, ok := starlark.AsString(command); ok {
				cmd = exec.Command("sh", "-c", str)
			} else {
				argv, err := stringList(command)
				if err != nil || len(argv) == 0 {
					return nil, fmt.Errorf("local: bad command: %v", err)
				}
				cmd = exec.Command(argv[0], argv[1:]...)
			}
			cmd.Dir = s.dir
			if dir != "" {
				cmd.Dir = s.path(dir)
			}
			cmd.Stderr = os.Stderr
			out, err := cmd.Output()
			if err != nil {
				return nil, fmt.Errorf("local(%s): %w", command, err)
			}
			return blob(out), nil
		}),
		"read_file": b("read_file", func(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var p string
			var def starlark.Value = starlark.None
			if err := starlark.UnpackArgs(fn.Name(), args, kw, "file_path", &p, "default?", &def); err != nil {
				return nil, err
			}
			data, err := os.ReadFile(s.path(p))
			if err != nil {
				if def != starlark.None {
					return def, nil
				}
				return nil, err
			}
			return blob(data), nil
		}),
		"read_yaml_stream": b("read_yaml_stream", func(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var p string
			var def starlark.Value = starlark.None
			if err := starlark.UnpackArgs(fn.Name(), args, kw, "path", &p, "default?", &def); err != nil {
				return nil, err
			}
			data, err := os.ReadFile(s.path(p))
			if err != nil {
				if def != starlark.None {
					return def, nil
				}
				return nil, err
			}
			docs, err := decodeStream(data)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
			return toStarlark(docs)
		}),
		"decode_yaml_stream": b("decode_yaml_stream", func(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var y starlark.Value
			if err := starlark.UnpackArgs(fn.Name(), args, kw, "yaml", &y); err != nil {
				return nil, err
			}
			docs, err := decodeStream([]byte(y.(interface{ String() string }).String()))
			if err != nil {
				return nil, err
			}
			return toStarlark(docs)
		}),
		"encode_yaml": b("encode_yaml", func(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var obj starlark.Value
			if err := starlark.UnpackArgs(fn.Name(), args, kw, "obj", &obj); err != nil {
				return nil, err
			}
			g, err := fromStarlark(obj)
			if err != nil {
				return nil, err
			}
			out, err := encodeStream([]any{g})
			return blob(out), err
		}),
		"encode_yaml_stream": b("encode_yaml_stream", func(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var objs *starlark.List
			if err := starlark.UnpackArgs(fn.Name(), args, kw, "objs", &objs); err != nil {
				return nil, err
			}
			g, err := fromStarlark(objs)
			if err != nil {
				return nil, err
			}
			out, err := encodeStream(g.([]any))
			return blob(out), err
		}),
		"docker_build": b("docker_build", func(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var ref, context, dockerfile, target, network, platform string
			var buildArgs *starlark.Dict
			var contents, liveUpdate, ignore, only, entrypoint, ssh, secret, extraTag, containerArgs, cacheFrom starlark.Value
			var match, pull bool
			if err := starlark.UnpackArgs(fn.Name(), args, kw, "ref", &ref, "context", &context,
				"build_args?", &buildArgs, "dockerfile?", &dockerfile, "dockerfile_contents?", &contents,
				"live_update?", &liveUpdate, "match_in_env_vars?", &match, "ignore?", &ignore, "only?", &only,
				"entrypoint?", &entrypoint, "target?", &target, "ssh?", &ssh, "network?", &network, "secret?", &secret,
				"extra_tag?", &extraTag, "container_args?", &containerArgs, "cache_from?", &cacheFrom, "pull?", &pull,
				"platform?", &platform); err != nil {
				return nil, err
			}
			if dockerfile == "" {
				dockerfile = "Dockerfile"
			}
			o, err := stringList(only)
			if err != nil {
				return nil, err
			}
			s.images = append(s.images, image{ref, context, dockerfile, o, match})
			return none, nil
		}),
		"k8s_yaml": b("k8s_yaml", func(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var y starlark.Value
			var dup bool
			if err := starlark.UnpackArgs(fn.Name(), args, kw, "yaml", &y, "allow_duplicates?", &dup); err != nil {
				return nil, err
			}
			var texts [][]byte
			if bl, ok := y.(blob); ok {
				texts = append(texts, []byte(bl))
			} else {
				paths, err := stringList(y)
				if err != nil {
					return nil, err
				}
				for _, p := range paths {
					data, err := os.ReadFile(s.path(p))
					if err != nil {
						return nil, err
					}
					texts = append(texts, data)
				}
			}
			for _, t := range texts {
				docs, err := decodeStream(t)
				if err != nil {
					return nil, fmt.Errorf("k8s_yaml: %w", err)
				}
				for _, d := range docs {
					m, ok := d.(map[string]any)
					if !ok || m["kind"] == nil || m["apiVersion"] == nil {
						return nil, fmt.Errorf("k8s_yaml: not a Kubernetes object: %v", d)
					}
					s.objects = append(s.objects, m)
				}
			}
			return none, nil
		}),
		"k8s_kind": b("k8s_kind", func(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var kind, apiVersion, readiness string
			var jsonPath, objPath starlark.Value
			if err := starlark.UnpackArgs(fn.Name(), args, kw, "kind", &kind, "api_version?", &apiVersion,
				"image_json_path?", &jsonPath, "image_object_json_path?", &objPath, "pod_readiness?", &readiness); err != nil {
				return nil, err
			}
			if readiness != "" && readiness != "wait" && readiness != "ignore" {
				return nil, fmt.Errorf("k8s_kind: pod_readiness %q", readiness)
			}
			s.kinds[kind] = true
			return none, nil
		}),
		"k8s_resource": b("k8s_resource", func(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var workload, newName, readiness, discovery string
			var pf, eps, trigger, deps, objects, links, labels starlark.Value
			var autoInit = true
			if err := starlark.UnpackArgs(fn.Name(), args, kw, "workload?", &workload, "new_name?", &newName,
				"port_forwards?", &pf, "extra_pod_selectors?", &eps, "trigger_mode?", &trigger,
				"resource_deps?", &deps, "objects?", &objects, "auto_init?", &autoInit, "pod_readiness?", &readiness,
				"links?", &links, "labels?", &labels, "discovery_strategy?", &discovery); err != nil {
				return nil, err
			}
			r := resourceCfg{Workload: workload, NewName: newName}
			var err error
			if r.ResourceDeps, err = stringList(deps); err != nil {
				return nil, err
			}
			if r.Objects, err = stringList(objects); err != nil {
				return nil, err
			}
			if pf != nil && pf != starlark.None {
				items := []starlark.Value{pf}
				if l, ok := pf.(*starlark.List); ok {
					items = nil
					for i := 0; i < l.Len(); i++ {
						items = append(items, l.Index(i))
					}
				}
				for _, it := range items {
					r.PortForwards = append(r.PortForwards, strings.Trim(it.String(), `"`))
				}
			}
			s.resources = append(s.resources, r)
			return none, nil
		}),
		"port_forward": b("port_forward", func(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var local, container int
			var name, linkPath, host string
			if err := starlark.UnpackArgs(fn.Name(), args, kw, "local_port", &local, "container_port?", &container,
				"name?", &name, "link_path?", &linkPath, "host?", &host); err != nil {
				return nil, err
			}
			if local <= 0 || local > 65535 || container < 0 || container > 65535 {
				return nil, fmt.Errorf("port_forward: bad ports %d:%d", local, container)
			}
			return starlark.String(fmt.Sprintf("%d:%d", local, container)), nil
		}),
		"local_resource": b("local_resource", func(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var name, dir, serveDir string
			var cmd, deps, trigger, rdeps, ignore, serveCmd, cmdBat, serveBat, links, tags, readiness, labels starlark.Value
			var env, serveEnv *starlark.Dict
			var autoInit, allowParallel = true, false
			if err := starlark.UnpackArgs(fn.Name(), args, kw, "name", &name, "cmd", &cmd, "deps?", &deps,
				"trigger_mode?", &trigger, "resource_deps?", &rdeps, "ignore?", &ignore, "auto_init?", &autoInit,
				"serve_cmd?", &serveCmd, "cmd_bat?", &cmdBat, "serve_cmd_bat?", &serveBat, "allow_parallel?", &allowParallel,
				"links?", &links, "tags?", &tags, "env?", &env, "serve_env?", &serveEnv, "readiness_probe?", &readiness,
				"dir?", &dir, "serve_dir?", &serveDir, "labels?", &labels); err != nil {
				return nil, err
			}
			d, err := stringList(deps)
			if err != nil {
				return nil, err
			}
			for _, p := range d {
				if _, err := os.Stat(s.path(p)); err != nil {
					return nil, fmt.Errorf("local_resource %s: dep %w", name, err)
				}
			}
			rd, err := stringList(rdeps)
			if err != nil {
				return nil, err
			}
			s.localResources[name] = rd
			return none, nil
		}),
	}

	osPath := &starlarkstruct.Module{Name: "path", Members: starlark.StringDict{
		"exists": b("exists", func(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var p string
			if err := starlark.UnpackArgs(fn.Name(), args, kw, "path", &p); err != nil {
				return nil, err
			}
			_, err := os.Stat(s.path(p))
			return starlark.Bool(err == nil), nil
		}),
		"join": b("join", func(_ *starlark.Thread, _ *starlark.Builtin, args starlark.Tuple, _ []starlark.Tuple) (starlark.Value, error) {
			parts := []string{}
			for _, a := range args {
				str, ok := starlark.AsString(a)
				if !ok {
					return nil, errors.New("os.path.join: strings only")
				}
				parts = append(parts, str)
			}
			return starlark.String(filepath.Join(parts...)), nil
		}),
	}}
	predeclared["os"] = &starlarkstruct.Module{Name: "os", Members: starlark.StringDict{
		"path": osPath,
		"getcwd": b("getcwd", func(*starlark.Thread, *starlark.Builtin, starlark.Tuple, []starlark.Tuple) (starlark.Value, error) {
			return starlark.String(s.dir), nil
		}),
		"getenv": b("getenv", func(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var k string
			var def starlark.Value = starlark.None
			if err := starlark.UnpackArgs(fn.Name(), args, kw, "key", &k, "default?", &def); err != nil {
				return nil, err
			}
			if v, ok := os.LookupEnv(k); ok {
				return starlark.String(v), nil
			}
			return def, nil
		}),
	}}
	predeclared["config"] = &starlarkstruct.Module{Name: "config", Members: starlark.StringDict{
		"define_string": b("define_string", func(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var name, usage string
			var isArgs bool
			if err := starlark.UnpackArgs(fn.Name(), args, kw, "name", &name, "args?", &isArgs, "usage?", &usage); err != nil {
				return nil, err
			}
			s.configStrings[name] = true
			return none, nil
		}),
		"parse": b("parse", func(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			if err := starlark.UnpackArgs(fn.Name(), args, kw); err != nil {
				return nil, err
			}
			d := starlark.NewDict(len(s.args))
			for _, a := range s.args {
				k, v, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
				if !ok || !s.configStrings[k] {
					return nil, fmt.Errorf("config.parse: unknown or malformed arg %q", a)
				}
				if err := d.SetKey(starlark.String(k), starlark.String(v)); err != nil {
					return nil, err
				}
			}
			return d, nil
		}),
	}}
	return predeclared
}

// --- what Tilt checks when it assembles resources -----------------------------------------------------

var workloadKinds = map[string]bool{"Deployment": true, "StatefulSet": true, "DaemonSet": true, "Job": true, "CronJob": true, "Pod": true, "ReplicaSet": true}

func repo(img string) string {
	if i := strings.LastIndex(img, "@"); i >= 0 {
		img = img[:i]
	}
	if i := strings.LastIndex(img, ":"); i > strings.LastIndex(img, "/") {
		img = img[:i]
	}
	return img
}

func get(m map[string]any, path ...string) any {
	var cur any = m
	for _, p := range path {
		mm, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = mm[p]
	}
	return cur
}

func containers(obj map[string]any) []map[string]any {
	var out []map[string]any
	for _, path := range [][]string{{"spec", "template", "spec"}, {"spec"}, {"spec", "jobTemplate", "spec", "template", "spec"}} {
		for _, key := range []string{"containers", "initContainers"} {
			if l, ok := get(obj, append(path, key)...).([]any); ok {
				for _, c := range l {
					if cm, ok := c.(map[string]any); ok {
						out = append(out, cm)
					}
				}
			}
		}
	}
	return out
}

func (s *state) assemble() (map[string]any, error) {
	var errs []string
	crdKinds := map[string]bool{}
	workloads := map[string]string{} // resource name -> kind
	for _, o := range s.objects {
		kind, _ := o["kind"].(string)
		name, _ := get(o, "metadata", "name").(string)
		if kind == "CustomResourceDefinition" {
			if k, ok := get(o, "spec", "names", "kind").(string); ok {
				crdKinds[k] = true
			}
		}
		if workloadKinds[kind] || s.kinds[kind] {
			if _, dup := workloads[name]; dup {
				errs = append(errs, fmt.Sprintf("two workloads named %s (Tilt would name them name:kind)", name))
			}
			workloads[name] = kind
		}
	}
	builtIn := map[string]bool{"Namespace": true, "ServiceAccount": true, "ClusterRole": true, "ClusterRoleBinding": true,
		"Role": true, "RoleBinding": true, "Service": true, "ConfigMap": true, "Secret": true, "Deployment": true,
		"PodDisruptionBudget": true, "CustomResourceDefinition": true, "Job": true, "StatefulSet": true, "DaemonSet": true}
	for _, o := range s.objects {
		kind, _ := o["kind"].(string)
		if !builtIn[kind] && !crdKinds[kind] {
			errs = append(errs, fmt.Sprintf("%s %v: no CustomResourceDefinition for it among the YAML", kind, get(o, "metadata", "name")))
		}
	}
	for _, img := range s.images {
		if _, err := os.Stat(s.path(img.Dockerfile)); err != nil {
			errs = append(errs, fmt.Sprintf("docker_build(%s): dockerfile %v", img.Ref, err))
		}
		for _, p := range img.Only {
			if _, err := os.Stat(filepath.Join(s.path(img.Context), p)); err != nil {
				errs = append(errs, fmt.Sprintf("docker_build(%s): only %v", img.Ref, err))
			}
		}
		used := false
		for _, o := range s.objects {
			for _, c := range containers(o) {
				if im, _ := c["image"].(string); repo(im) == img.Ref {
					used = true
				}
				if env, ok := c["env"].([]any); ok && img.MatchInEnvVars {
					for _, e := range env {
						if v, _ := get(e.(map[string]any), "value").(string); repo(v) == img.Ref {
							used = true
						}
					}
				}
			}
		}
		if !used {
			errs = append(errs, fmt.Sprintf("image %s is built but no workload uses it", img.Ref))
		}
	}
	names := map[string]bool{}
	for n := range workloads {
		names[n] = true
	}
	for _, r := range s.resources {
		if r.Workload == "" {
			if r.NewName == "" || len(r.Objects) == 0 {
				errs = append(errs, "k8s_resource without workload needs new_name and objects")
			}
			names[r.NewName] = true
			continue
		}
		if _, ok := workloads[r.Workload]; !ok {
			errs = append(errs, fmt.Sprintf("k8s_resource(%q): no such workload (have %v)", r.Workload, keys(workloads)))
		}
		if r.NewName != "" {
			delete(names, r.Workload)
			names[r.NewName] = true
		}
	}
	for n := range s.localResources {
		names[n] = true
	}
	for _, r := range s.resources {
		for _, d := range r.ResourceDeps {
			if !names[d] {
				errs = append(errs, fmt.Sprintf("resource_deps of %s: no resource %q", r.Workload, d))
			}
		}
	}
	for n, deps := range s.localResources {
		for _, d := range deps {
			if !names[d] {
				errs = append(errs, fmt.Sprintf("resource_deps of %s: no resource %q", n, d))
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.New(strings.Join(errs, "\n"))
	}
	return map[string]any{"resources": keysOf(names), "images": s.images, "k8s_resources": s.resources, "objects": len(s.objects)}, nil
}

func keys(m map[string]string) []string {
	out := []string{}
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func keysOf(m map[string]bool) []string {
	out := []string{}
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func main() {
	file := flag.String("f", "Tiltfile", "the Tiltfile")
	out := flag.String("out", "", "write the YAML given to k8s_yaml here")
	flag.Parse()
	abs, err := filepath.Abs(*file)
	if err != nil {
		fatal(err)
	}
	s := &state{dir: filepath.Dir(abs), args: flag.Args(), localResources: map[string][]string{},
		kinds: map[string]bool{}, configStrings: map[string]bool{}}
	thread := &starlark.Thread{Name: "Tiltfile", Print: func(_ *starlark.Thread, msg string) { fmt.Fprintln(os.Stderr, msg) }}
	opts := &syntax.FileOptions{Set: true, While: true, TopLevelControl: true, GlobalReassign: true, Recursion: true}
	src, err := os.ReadFile(abs)
	if err != nil {
		fatal(err)
	}
	predeclared := s.builtins()
	predeclared["__file__"] = starlark.String(abs)
	if _, err := starlark.ExecFileOptions(opts, thread, abs, src, predeclared); err != nil {
		var ee *starlark.EvalError
		if errors.As(err, &ee) {
			fatal(errors.New(ee.Backtrace()))
		}
		fatal(err)
	}
	summary, err := s.assemble()
	if err != nil {
		fatal(err)
	}
	if *out != "" {
		docs := make([]any, len(s.objects))
		for i, o := range s.objects {
			docs[i] = o
		}
		text, err := encodeStream(docs)
		if err != nil {
			fatal(err)
		}
		if err := os.WriteFile(*out, []byte(text), 0o644); err != nil {
			fatal(err)
		}
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(summary); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "tiltfile_check:", err)
	os.Exit(5) // what `tilt alpha tiltfile-result` exits with on an evaluation error
}
