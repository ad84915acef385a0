// kubevirt-check holds hostplane's KubeVirt objects against KubeVirt's own code, so tests can
// prove that what the hooks render is a VirtualMachine KubeVirt accepts, without a KubeVirt
// installation.
//
//	kubevirt-check verify [FILE...]  decode every kubevirt.io/v1 VirtualMachine of the YAML
//	                                 stream (stdin when no FILE is given) strictly into
//	                                 kubevirt.io/api/core/v1.VirtualMachine
//	kubevirt-check crd               print the VirtualMachine CustomResourceDefinition as
//	                                 virt-operator installs it
//	kubevirt-check version           print the kubevirt.io/api version built in
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"runtime/debug"
	"sort"
	"strings"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	virtv1 "kubevirt.io/api/core/v1"
	"kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/components"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

const usage = `usage:
  kubevirt-check verify [FILE...]   check every kubevirt.io/v1 VirtualMachine (stdin without FILE)
  kubevirt-check crd                print the VirtualMachine CRD as KubeVirt installs it
  kubevirt-check version            print the kubevirt.io/api version built in
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "verify":
		err = verify(os.Args[2:], os.Stdin, os.Stdout)
	case "crd":
		err = printCRD(os.Stdout)
	case "version":
		fmt.Println(apiVersion())
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "kubevirt-check: unknown command %q\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubevirt-check: %v\n", err)
		os.Exit(1)
	}
}

// apiVersion is the version of kubevirt.io/api linked into this binary.
func apiVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, dep := range info.Deps {
		if dep.Path != "kubevirt.io/api" {
			continue
		}
		if dep.Replace != nil {
			return dep.Replace.Version
		}
		return dep.Version
	}
	return "unknown"
}

// source is one input stream and the name errors call it by.
type source struct {
	name   string
	reader io.Reader
}

// verify checks every document of the named files (or of stdin) and reports each failure,
// naming the input, the document's position and, for VirtualMachines, its name.
func verify(files []string, stdin io.Reader, stdout io.Writer) error {
	var sources []source
	if len(files) == 0 {
		sources = append(sources, source{name: "stdin", reader: stdin})
	}
	for _, file := range files {
		f, err := os.Open(file)
		if err != nil {
			return err
		}
		defer f.Close()
		sources = append(sources, source{name: file, reader: f})
	}

	var failures []string
	machines, others := 0, 0
	for _, src := range sources {
		docs := utilyaml.NewYAMLReader(bufio.NewReader(src.reader))
		for index := 1; ; index++ {
			doc, err := docs.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return fmt.Errorf("%s, document %d: cannot read YAML: %v", src.name, index, err)
			}
			isMachine, problems := checkDocument(doc)
			where := fmt.Sprintf("%s, document %d", src.name, index)
			for _, problem := range problems {
				failures = append(failures, where+": "+problem)
			}
			switch {
			case isMachine:
				machines++
			case len(problems) == 0 && !isEmpty(doc):
				others++
			}
		}
	}
	if len(failures) > 0 {
		return errors.New(joinLines(failures))
	}
	if machines == 0 {
		// An empty or mis-rendered stream must not pass as "all VirtualMachines valid".
		return errors.New("no kubevirt.io/v1 VirtualMachine in the input")
	}
	fmt.Fprintf(stdout,
		"kubevirt-check: %d VirtualMachine(s) decode strictly into kubevirt.io/api/core/v1.VirtualMachine (kubevirt.io/api %s); %d other document(s) not checked\n",
		machines, apiVersion(), others)
	return nil
}

// isEmpty tells a document holding only comments or whitespace, which YAML streams often end
// with.
func isEmpty(doc []byte) bool {
	js, err := yaml.YAMLToJSON(doc)
	return err == nil && bytes.Equal(bytes.TrimSpace(js), []byte("null"))
}

// checkDocument decodes one YAML document. It returns whether the document is a
// kubevirt.io/v1 VirtualMachine and what is wrong with it.
func checkDocument(doc []byte) (bool, []string) {
	// Strict YAML → JSON refuses duplicate keys, which a lenient decoder would resolve
	// silently (the last one winning).
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return false, []string{fmt.Sprintf("not valid YAML: %v", err)}
	}
	if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
		return false, nil
	}
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(js, &head); err != nil {
		return false, []string{fmt.Sprintf("not a Kubernetes object: %v", err)}
	}
	if head.APIVersion != virtv1.SchemeGroupVersion.String() || head.Kind != "VirtualMachine" {
		return false, nil
	}
	label := fmt.Sprintf("VirtualMachine %q", head.Metadata.Name)
	var problems []string
	if head.Metadata.Name == "" {
		problems = append(problems, label+": metadata.name is empty")
	}
	// Decoding catches values of the wrong type, and (with the API machinery's decoder)
	// duplicated fields; KubeVirt's types do not get strict unknown-field checking from it,
	// see unknownFields.
	var vm virtv1.VirtualMachine
	strict, err := sigsjson.UnmarshalStrict(js, &vm, sigsjson.DisallowDuplicateFields)
	if err != nil {
		problems = append(problems, fmt.Sprintf("%s: %v", label, err))
	}
	for _, e := range strict {
		problems = append(problems, fmt.Sprintf("%s: %v", label, e))
	}
	var generic any
	if err := json.Unmarshal(js, &generic); err != nil {
		return true, append(problems, fmt.Sprintf("%s: %v", label, err))
	}
	for _, path := range unknownFields("", generic, reflect.TypeOf(vm)) {
		problems = append(problems, fmt.Sprintf("%s: unknown field %q", label, path))
	}
	return true, problems
}

var jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()

// unknownFields lists the paths of the fields of value that Go type t has no field for.
//
// A strict decoder cannot find them all: KubeVirt's VirtualMachineInstanceSpec (and
// PodNetwork, DHCPOptions) implement UnmarshalJSON by handing an alias type to the lenient
// encoding/json, so everything under spec.template.spec would be accepted with any extra
// field. Instead the value is walked along the type's JSON field names (case-sensitively, as
// the API server matches them). Types with an UnmarshalJSON of their own outside KubeVirt
// (resource.Quantity, metav1.Time, IntOrString, RawExtension) are values, not objects, and
// their decoding already checked them.
func unknownFields(path string, value any, t reflect.Type) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if !strings.HasPrefix(t.PkgPath(), "kubevirt.io/") &&
		(t.Implements(jsonUnmarshaler) || reflect.PointerTo(t).Implements(jsonUnmarshaler)) {
		return nil
	}
	var unknown []string
	switch t.Kind() {
	case reflect.Struct:
		object, ok := value.(map[string]any)
		if !ok {
			return nil
		}
		fields := jsonFields(t)
		keys := make([]string, 0, len(object))
		for key := range object {
			keys = append(keys, key)
		}
		sort.Strings(keys)
		for _, key := range keys {
			child := joinPath(path, key)
			fieldType, known := fields[key]
			if !known {
				unknown = append(unknown, child)
				continue
			}
			unknown = append(unknown, unknownFields(child, object[key], fieldType)...)
		}
	case reflect.Slice, reflect.Array:
		items, ok := value.([]any)
		if !ok || t.Elem().Kind() == reflect.Uint8 {
			return nil
		}
		for i, item := range items {
			unknown = append(unknown, unknownFields(fmt.Sprintf("%s[%d]", path, i), item, t.Elem())...)
		}
	case reflect.Map:
		entries, ok := value.(map[string]any)
		if !ok {
			return nil
		}
		keys := make([]string, 0, len(entries))
		for key := range entries {
			keys = append(keys, key)
		}
		sort.Strings(keys)
		for _, key := range keys {
			unknown = append(unknown, unknownFields(joinPath(path, key), entries[key], t.Elem())...)
		}
	}
	return unknown
}

// jsonFields maps the JSON names of struct t's fields to their types, following
// encoding/json: `json:"-"` is skipped, embedded structs without a name (or with
// `json:",inline"`) contribute their own fields.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	fields := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		field := t.Field(i)
		tag := field.Tag.Get("json")
		name, _, _ := strings.Cut(tag, ",")
		if name == "-" && !strings.Contains(tag, ",") {
			continue
		}
		if !field.IsExported() && !field.Anonymous {
			continue
		}
		embedded := field.Type
		if embedded.Kind() == reflect.Pointer {
			embedded = embedded.Elem()
		}
		if field.Anonymous && name == "" && embedded.Kind() == reflect.Struct {
			for inner, innerType := range jsonFields(embedded) {
				if _, shadowed := fields[inner]; !shadowed {
					fields[inner] = innerType
				}
			}
			continue
		}
		if name == "" {
			name = field.Name
		}
		fields[name] = field.Type
	}
	return fields
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func joinLines(lines []string) string {
	var b bytes.Buffer
	for i, line := range lines {
		if i > 0 {
			b.WriteString("\n")
		}
		b.WriteString(line)
	}
	return b.String()
}

// printCRD writes the VirtualMachine CRD built by virt-operator's own generator, with its
// OpenAPI validation patched in as on a KubeVirt installation.
func printCRD(stdout io.Writer) error {
	crd, err := components.NewVirtualMachineCrd()
	if err != nil {
		return fmt.Errorf("generating the VirtualMachine CRD: %v", err)
	}
	js, err := json.Marshal(crd)
	if err != nil {
		return err
	}
	// Drop what the API server owns (an empty status, a null creationTimestamp), so the
	// output is what one would apply.
	var object map[string]any
	if err := json.Unmarshal(js, &object); err != nil {
		return err
	}
	delete(object, "status")
	if metadata, ok := object["metadata"].(map[string]any); ok {
		delete(metadata, "creationTimestamp")
	}
	out, err := yaml.Marshal(object)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "# VirtualMachine CRD generated by kubevirt.io/kubevirt %s (virt-operator's components.NewVirtualMachineCrd)\n", kubevirtVersion())
	_, err = stdout.Write(out)
	return err
}

// kubevirtVersion is the version of kubevirt.io/kubevirt linked into this binary.
func kubevirtVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, dep := range info.Deps {
		if dep.Path == "kubevirt.io/kubevirt" {
			return dep.Version
		}
	}
	return "unknown"
}
