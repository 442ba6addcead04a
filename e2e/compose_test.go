package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/heraldgw/herald/internal/config"
)

// Docker is not available where the tests run, so this file checks the
// deployment files against the code instead: the compose stack must only
// use configuration variables, commands and flags that exist, with values
// the gateway accepts, and must run nginx with the configuration the browser
// tests ran.

// composeFile is the part of the compose format docker-compose.yml uses.
// Unknown keys are errors (a misspelt key would be ignored by compose).
type composeFile struct {
	Name       string                    `yaml:"name"`
	Services   map[string]composeService `yaml:"services"`
	Networks   map[string]composeNetwork `yaml:"networks"`
	Volumes    map[string]any            `yaml:"volumes"`
	Extensions map[string]any            `yaml:",inline"` // x-… anchors
}

type composeService struct {
	Image           string                       `yaml:"image"`
	Build           string                       `yaml:"build"`
	Command         []string                     `yaml:"command"`
	Environment     map[string]string            `yaml:"environment"`
	Volumes         []string                     `yaml:"volumes"`
	Ports           []string                     `yaml:"ports"`
	DependsOn       map[string]composeDependency `yaml:"depends_on"`
	Healthcheck     *composeHealthcheck          `yaml:"healthcheck"`
	Restart         string                       `yaml:"restart"`
	StopGracePeriod string                       `yaml:"stop_grace_period"`
	Networks        serviceNetworks              `yaml:"networks"`
}

// serviceNetworks are the networks of a service, by name, from either form
// compose takes: a list of names, or a map of names to settings.
type serviceNetworks map[string]serviceNetwork

type serviceNetwork struct {
	IPv4Address string `yaml:"ipv4_address"`
}

// UnmarshalYAML reads both forms. Node.Decode does not refuse unknown keys
// as the file's decoder does, so the map form checks its keys itself.
func (ns *serviceNetworks) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	*ns = serviceNetworks{}
	switch n.Kind {
	case yaml.SequenceNode:
		var names []string
		if err := n.Decode(&names); err != nil {
			return err
		}
		for _, name := range names {
			(*ns)[name] = serviceNetwork{}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			name, v := n.Content[i].Value, n.Content[i+1]
			var sn serviceNetwork
			switch {
			case v.Kind == yaml.MappingNode:
				for j := 0; j+1 < len(v.Content); j += 2 {
					if k := v.Content[j]; k.Value != "ipv4_address" {
						return fmt.Errorf("line %d: network %s: unknown key %q", k.Line, name, k.Value)
					}
				}
				if err := v.Decode(&sn); err != nil {
					return err
				}
			case v.Kind == yaml.ScalarNode && v.Tag == "!!null":
			default:
				return fmt.Errorf("line %d: network %s: want a map of settings", v.Line, name)
			}
			(*ns)[name] = sn
		}
	default:
		return fmt.Errorf("line %d: networks: want a list or a map", n.Line)
	}
	return nil
}

type composeDependency struct {
	Condition string `yaml:"condition"`
}

type composeHealthcheck struct {
	Test        []string `yaml:"test"`
	Interval    string   `yaml:"interval"`
	Timeout     string   `yaml:"timeout"`
	Retries     int      `yaml:"retries"`
	StartPeriod string   `yaml:"start_period"`
}

type composeNetwork struct {
	IPAM struct {
		Config []struct {
			Subnet  string `yaml:"subnet"`
			Gateway string `yaml:"gateway"`
			IPRange string `yaml:"ip_range"`
		} `yaml:"config"`
	} `yaml:"ipam"`
}

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	raw, err := os.ReadFile(composePath)
	if err != nil {
		t.Fatal(err)
	}
	var f composeFile
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("%s: %v", composePath, err)
	}
	for k := range f.Extensions {
		if !strings.HasPrefix(k, "x-") {
			t.Errorf("%s: unknown top-level key %q", composePath, k)
		}
	}
	if len(f.Services) == 0 {
		t.Fatalf("%s: no services", composePath)
	}
	return f
}

// interpolate applies compose's ${VAR:-default} and ${VAR-default} as if
// VAR were unset (the defaults are what `docker compose up` runs with), and
// $$ as a literal $.
var interpolation = regexp.MustCompile(`\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}`)

func interpolate(s string) string {
	return interpolation.ReplaceAllStringFunc(s, func(m string) string {
		if m == "$$" {
			return "$"
		}
		return interpolation.FindStringSubmatch(m)[2]
	})
}

// heraldBinary names the Herald program a service runs ("" for none).
func (s composeService) heraldBinary() string {
	if len(s.Command) == 0 || !strings.HasPrefix(s.Command[0], "/usr/local/bin/") {
		return ""
	}
	return path.Base(s.Command[0])
}

// programHelp runs a built program with args (ending in -h) and returns
// what it printed and whether it exited 0.
func programHelp(t *testing.T, exe string, args ...string) (string, bool) {
	t.Helper()
	out, err := exec.Command(exe, args...).CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("%s %v: %v", exe, args, err)
	}
	return string(out), err == nil
}

var (
	helpFlag = regexp.MustCompile(`(?m)^\s+-{1,2}([A-Za-z0-9][A-Za-z0-9-]*)`)
	helpEnv  = regexp.MustCompile(`\benv ([A-Z][A-Z0-9_]+)`)
)

// flagsOf lists the flags a program's -h output names.
func flagsOf(help string) map[string]bool {
	flags := map[string]bool{"h": true, "help": true}
	for _, m := range helpFlag.FindAllStringSubmatch(help, -1) {
		flags[m[1]] = true
	}
	return flags
}

// checkFlags reports command-line arguments that are not flags of the program.
func checkFlags(t *testing.T, service string, args []string, flags map[string]bool) {
	t.Helper()
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !flags[name] {
			t.Errorf("service %s: flag %s does not exist", service, a)
		}
	}
}

// runtimeVars may be set for any Go program.
var runtimeVars = map[string]bool{"GOMEMLIMIT": true, "GOGC": true, "GOMAXPROCS": true, "GODEBUG": true, "TZ": true}

func TestComposeMatchesCode(t *testing.T) {
	bins := binaries(t)
	f := loadCompose(t)
	gatewayVars := map[string]bool{}
	for _, v := range config.Variables() {
		gatewayVars[v] = true
	}

	gateways := map[string]composeService{} // by service name
	for name, s := range f.Services {
		for dep := range s.DependsOn {
			if _, ok := f.Services[dep]; !ok {
				t.Errorf("service %s depends on unknown service %s", name, dep)
			}
		}
		for n := range s.Networks {
			if _, ok := f.Networks[n]; !ok {
				t.Errorf("service %s: unknown network %s", name, n)
			}
		}
		if s.Build != "" && s.Build != "." {
			t.Errorf("service %s builds %q, want the Dockerfile at the root", name, s.Build)
		}
		bin := s.heraldBinary()
		if bin == "" {
			continue
		}
		if s.Build == "" {
			t.Errorf("service %s runs %s but does not build the image", name, bin)
		}
		exe := filepath.Join(bins, bin)
		if _, err := os.Stat(exe); err != nil {
			t.Errorf("service %s runs %s, which no package builds (%v)", name, s.Command[0], binaryPackages)
			continue
		}
		env := map[string]string{}
		for k, v := range s.Environment {
			env[k] = interpolate(v)
		}
		switch bin {
		case "gateway":
			gateways[name] = s
			help, _ := programHelp(t, exe, "-h")
			checkFlags(t, name, s.Command[1:], flagsOf(help))
			for k := range env {
				if !gatewayVars[k] && !runtimeVars[k] {
					t.Errorf("service %s: %s is not a gateway configuration variable", name, k)
				}
			}
			// The values are ones the gateway starts with.
			if _, err := config.Load(nil, func(k string) string { return env[k] }, io.Discard); err != nil {
				t.Errorf("service %s: the gateway refuses its environment: %v", name, err)
			}
			if env["HERALD_NODE"] == "" {
				t.Errorf("service %s: set HERALD_NODE, the replica name the demo page shows", name)
			}
		case "worker":
			if len(s.Command) < 2 || strings.HasPrefix(s.Command[1], "-") {
				t.Errorf("service %s: worker needs a command (run, publish, demo): %v", name, s.Command)
				continue
			}
			help, ok := programHelp(t, exe, s.Command[1], "-h")
			if !ok {
				t.Errorf("service %s: `worker %s` is not a worker command:\n%s", name, s.Command[1], help)
				continue
			}
			checkFlags(t, name, s.Command[2:], flagsOf(help))
			workerVars := map[string]bool{}
			for _, m := range helpEnv.FindAllStringSubmatch(help, -1) {
				workerVars[m[1]] = true
			}
			for k := range env {
				if !workerVars[k] && !runtimeVars[k] {
					t.Errorf("service %s: the worker does not read %s (it reads %v)", name, k, keys(workerVars))
				}
			}
		}
		checkRedisURL(t, f, name, env["REDIS_URL"])
		if hc := s.Healthcheck; hc != nil && len(hc.Test) > 1 && strings.HasPrefix(hc.Test[1], "/usr/local/bin/") {
			if _, err := os.Stat(filepath.Join(bins, path.Base(hc.Test[1]))); err != nil {
				t.Errorf("service %s: healthcheck runs %s, which no package builds", name, hc.Test[1])
			}
		}
	}
	if len(gateways) < 2 {
		t.Fatalf("gateway services: %v, want two replicas", keys(gateways))
	}
	nodes := map[string]string{}
	for name, g := range gateways {
		checkGatewayService(t, name, g)
		if other, dup := nodes[g.Environment["HERALD_NODE"]]; dup {
			t.Errorf("services %s and %s share HERALD_NODE %q", name, other, g.Environment["HERALD_NODE"])
		}
		nodes[g.Environment["HERALD_NODE"]] = name
	}
	checkNginxService(t, f, gateways)
}

// checkRedisURL: a Herald service's Redis is a service of the stack that
// keeps an append-only file, and it waits for it to be healthy.
func checkRedisURL(t *testing.T, f composeFile, service, redisURL string) {
	if redisURL == "" {
		t.Errorf("service %s: no REDIS_URL", service)
		return
	}
	host, _, _ := net.SplitHostPort(strings.TrimPrefix(redisURL, "redis://"))
	r, ok := f.Services[host]
	if !ok {
		t.Errorf("service %s: REDIS_URL names %q, not a service", service, host)
		return
	}
	if !strings.Contains(strings.Join(r.Command, " "), "--appendonly yes") {
		t.Errorf("service %s: Redis runs %v, want --appendonly yes", host, r.Command)
	}
	if r.Healthcheck == nil {
		t.Errorf("service %s: no healthcheck", host)
	}
	if f.Services[service].DependsOn[host].Condition != "service_healthy" {
		t.Errorf("service %s: want depends_on %s: condition: service_healthy", service, host)
	}
}

// checkGatewayService: the healthcheck probes the gateway's /readyz on its
// own port, and SIGTERM's drain fits in the stop grace period.
func checkGatewayService(t *testing.T, name string, s composeService) {
	port := portOf(s.Environment["HERALD_ADDR"])
	hc := s.Healthcheck
	if hc == nil || len(hc.Test) < 3 || hc.Test[0] != "CMD" {
		t.Errorf("service %s: want an exec-form healthcheck, got %+v", name, hc)
	} else if want := "http://127.0.0.1:" + port + "/readyz"; hc.Test[len(hc.Test)-1] != want {
		t.Errorf("service %s: healthcheck %v, want it to probe %s", name, hc.Test, want)
	}
	if s.StopGracePeriod == "" {
		t.Errorf("service %s: set stop_grace_period above HERALD_DRAIN_TIMEOUT", name)
	}
}

// checkNginxService: nginx mounts the template the browser tests run, fills
// exactly its placeholders, points at every gateway replica, and has a fixed
// address on the gateways' network, the only one they trust for
// X-Forwarded-For, which the template sets rather than appends to.
func checkNginxService(t *testing.T, f composeFile, gateways map[string]composeService) {
	var name string
	for n, s := range f.Services {
		if strings.HasPrefix(s.Image, "nginx:") {
			name = n
		}
	}
	if name == "" {
		t.Fatal("no nginx service")
	}
	s := f.Services[name]

	const templates = "/etc/nginx/templates/"
	mounted := false
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) < 2 || !strings.HasPrefix(parts[1], templates) {
			continue
		}
		mounted = true
		if got, want := filepath.Clean(filepath.Join(moduleRoot, parts[0])), filepath.Clean(nginxTemplate); got != want {
			t.Errorf("nginx mounts %s, but the browser tests run %s", parts[0], nginxTemplate)
		}
		if !strings.HasSuffix(parts[1], ".template") {
			t.Errorf("nginx: %s is not a template the image renders", parts[1])
		}
	}
	if !mounted {
		t.Errorf("nginx mounts no template into %s: %v", templates, s.Volumes)
	}

	tmpl, err := os.ReadFile(nginxTemplate)
	if err != nil {
		t.Fatal(err)
	}
	want := templatePlaceholders(string(tmpl))
	for k := range want {
		if _, ok := s.Environment[k]; !ok {
			t.Errorf("nginx: template placeholder %s is not set", k)
		}
	}
	for k := range s.Environment {
		if !want[k] {
			t.Errorf("nginx: %s is set but the template does not use it", k)
		}
	}
	if _, err := renderTemplate(string(tmpl), s.Environment); err != nil {
		t.Errorf("nginx: %v", err)
	}

	upstreams := map[string]bool{}
	for k, v := range s.Environment {
		if !strings.HasPrefix(k, "LB_UPSTREAM_") {
			continue
		}
		host, port, err := net.SplitHostPort(v)
		g, ok := gateways[host]
		if err != nil || !ok {
			t.Errorf("nginx: %s=%s is not a gateway service's host:port", k, v)
			continue
		}
		if p := portOf(g.Environment["HERALD_ADDR"]); p != port {
			t.Errorf("nginx: %s=%s, but %s listens on port %s", k, v, host, p)
		}
		upstreams[host] = true
		if s.DependsOn[host].Condition != "service_healthy" {
			t.Errorf("nginx: want depends_on %s: condition: service_healthy", host)
		}
	}
	for g := range gateways {
		if !upstreams[g] {
			t.Errorf("nginx: gateway %s is not an upstream", g)
		}
	}
	listen := portOf(s.Environment["LB_LISTEN"])
	published := false
	for _, p := range s.Ports {
		published = published || strings.HasSuffix(p, ":"+listen)
	}
	if !published {
		t.Errorf("nginx listens on %s but publishes %v", listen, s.Ports)
	}

	// The gateways believe X-Forwarded-For from nginx alone: from its fixed
	// address on each network it shares with them, not from the network's
	// subnet, which holds the bridge gateway, the peer nginx sees for every
	// client that comes in through docker-proxy. And nginx, the edge,
	// replaces the header a client sent rather than appending to it.
	checkForwardedFor(t, string(tmpl))
	nginxAddrs := map[netip.Addr]string{} // nginx's fixed addresses, to their network
	for n, sn := range s.Networks {
		for gname, g := range gateways {
			if _, ok := g.Networks[n]; !ok {
				t.Errorf("service %s is not on nginx's network %s", gname, n)
			}
		}
		if a, ok := fixedAddress(t, f, name, n, sn); ok {
			nginxAddrs[a] = n
		}
	}
	for gname, g := range gateways {
		raw := strings.TrimSpace(g.Environment["HERALD_TRUSTED_PROXIES"])
		if raw == "" {
			t.Errorf("service %s: no HERALD_TRUSTED_PROXIES: the gateway would take every client for nginx", gname)
			continue
		}
		for _, c := range strings.Split(raw, ",") {
			c = strings.TrimSpace(c)
			p, err := netip.ParsePrefix(c)
			if err != nil {
				a, aerr := netip.ParseAddr(c)
				if aerr != nil {
					t.Errorf("service %s: HERALD_TRUSTED_PROXIES: %q is not a CIDR", gname, c)
					continue
				}
				p = netip.PrefixFrom(a, a.BitLen())
			}
			if n, ok := nginxAddrs[p.Addr()]; !ok || !p.IsSingleIP() {
				t.Errorf("service %s: HERALD_TRUSTED_PROXIES has %s, want only nginx's own address (%v): "+
					"a client connecting from another address there could forge X-Forwarded-For", gname, p, slices.Collect(maps.Keys(nginxAddrs)))
			} else if _, on := g.Networks[n]; !on {
				t.Errorf("service %s trusts nginx's address %s on network %s, which it is not on", gname, p.Addr(), n)
			}
		}
	}
}

// fixedAddress checks nginx's ipv4_address on network n: set, in the
// network's subnet, neither its network address nor its gateway (the bridge
// gateway is where clients coming in through docker-proxy connect from),
// and outside the ip_range Docker hands addresses out from, so no container
// that starts before nginx can take it.
func fixedAddress(t *testing.T, f composeFile, service, n string, sn serviceNetwork) (netip.Addr, bool) {
	t.Helper()
	if sn.IPv4Address == "" {
		t.Errorf("service %s: no ipv4_address on network %s, which the gateways' HERALD_TRUSTED_PROXIES needs", service, n)
		return netip.Addr{}, false
	}
	addr, err := netip.ParseAddr(sn.IPv4Address)
	if err != nil {
		t.Errorf("service %s: network %s: ipv4_address: %v", service, n, err)
		return netip.Addr{}, false
	}
	cfg := f.Networks[n].IPAM.Config
	if len(cfg) == 0 {
		t.Errorf("network %s has no fixed subnet for nginx's ipv4_address", n)
		return addr, true
	}
	subnet, err := netip.ParsePrefix(cfg[0].Subnet)
	if err != nil {
		t.Errorf("network %s: %v", n, err)
		return addr, true
	}
	subnet = subnet.Masked()
	gateway := subnet.Addr().Next() // Docker's default: the subnet's first host address
	if cfg[0].Gateway != "" {
		if gateway, err = netip.ParseAddr(cfg[0].Gateway); err != nil {
			t.Errorf("network %s: gateway: %v", n, err)
		}
	}
	switch {
	case !subnet.Contains(addr):
		t.Errorf("service %s: ipv4_address %s is not in network %s's subnet %s", service, addr, n, subnet)
	case addr == subnet.Addr() || addr == gateway:
		t.Errorf("service %s: ipv4_address %s is network %s's network or gateway address", service, addr, n)
	}
	if cfg[0].IPRange == "" {
		t.Errorf("network %s: set ip_range, leaving out nginx's %s, or a container started before nginx can take it", n, addr)
	} else if r, err := netip.ParsePrefix(cfg[0].IPRange); err != nil {
		t.Errorf("network %s: ip_range: %v", n, err)
	} else if r.Contains(addr) {
		t.Errorf("network %s: ip_range %s holds nginx's %s: a container started before nginx can take it", n, r, addr)
	} else if !subnet.Contains(r.Addr()) || r.Bits() < subnet.Bits() {
		t.Errorf("network %s: ip_range %s is not within subnet %s", n, r, subnet)
	}
	return addr, true
}

// checkForwardedFor: nginx, the edge, sets X-Forwarded-For to the peer it
// saw. Appending ($proxy_add_x_forwarded_for) would keep what the client
// sent, and a gateway believes the rightmost untrusted entry: a client whose
// own address is trusted would choose its address.
func checkForwardedFor(t *testing.T, tmpl string) {
	t.Helper()
	sets := regexp.MustCompile(`(?mi)^\s*proxy_set_header\s+X-Forwarded-For\s+([^;]*);`).FindAllStringSubmatch(tmpl, -1)
	if len(sets) == 0 {
		t.Errorf("%s does not set X-Forwarded-For: the gateways would see nginx's address for every client", nginxTemplate)
	}
	for _, m := range sets {
		if v := strings.TrimSpace(m[1]); v != "$remote_addr" {
			t.Errorf("%s sets X-Forwarded-For to %s, want $remote_addr: nginx is the edge, a header the client sent must be replaced", nginxTemplate, v)
		}
	}
}

func TestDockerfile(t *testing.T) {
	raw, err := os.ReadFile(dockerfile)
	if err != nil {
		t.Fatal(err)
	}
	// Join continuation lines, drop comments, split into stages.
	text := regexp.MustCompile(`\\\n`).ReplaceAllString(string(raw), " ")
	var stages [][]string
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(strings.ToUpper(line), "FROM ") {
			stages = append(stages, nil)
		}
		if len(stages) > 0 {
			stages[len(stages)-1] = append(stages[len(stages)-1], line)
		}
	}
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a multi-stage build", len(stages))
	}

	buildOut := regexp.MustCompile(`go build\b[^&;]*?-o (\S+) (\./\S+)`)
	var built []string
	for _, stage := range stages[:len(stages)-1] {
		staticEnv := false
		for _, line := range stage {
			if strings.HasPrefix(line, "ENV ") && strings.Contains(line, "CGO_ENABLED=0") {
				staticEnv = true
			}
			for _, m := range buildOut.FindAllStringSubmatch(line, -1) {
				built = append(built, m[2])
				cmd := line[:strings.Index(line, m[0])+len(m[0])]
				if !staticEnv && !strings.Contains(cmd[strings.LastIndex(cmd, "&&")+1:], "CGO_ENABLED=0") {
					t.Errorf("%s is not built with CGO_ENABLED=0", m[2])
				}
			}
		}
	}
	slices.Sort(built)
	want := slices.Sorted(slices.Values(binaryPackages))
	if !slices.Equal(built, want) {
		t.Errorf("the Dockerfile builds %v, want %v (what the tests build and compose runs)", built, want)
	}

	final := stages[len(stages)-1]
	base := strings.Fields(final[0])[1]
	if strings.HasPrefix(base, "golang") || strings.Contains(base, "debian:") || strings.Contains(base, "ubuntu") {
		t.Errorf("final image %s is not minimal (scratch or distroless)", base)
	}
	var user string
	copied := false
	for _, line := range final {
		if strings.HasPrefix(line, "USER ") {
			user = strings.TrimSpace(strings.TrimPrefix(line, "USER "))
		}
		copied = copied || (strings.HasPrefix(line, "COPY --from=") && strings.Contains(line, "/usr/local/bin/"))
	}
	if name, _, _ := strings.Cut(user, ":"); name == "" || name == "root" || name == "0" {
		t.Errorf("final stage USER %q, want an unprivileged user", user)
	}
	if !copied {
		t.Error("final stage does not copy the binaries to /usr/local/bin/, where compose runs them")
	}

	ignore, err := os.ReadFile(filepath.Join(moduleRoot, ".dockerignore"))
	if err != nil || !regexp.MustCompile(`(?m)^\.git$`).Match(ignore) {
		t.Errorf(".dockerignore must keep .git out of the build context (%v)", err)
	}
}

// TestRunClusterUsesTheTemplate: make run-cluster fills the same nginx
// template as compose and the browser tests.
func TestRunClusterUsesTheTemplate(t *testing.T) {
	script, err := os.ReadFile(filepath.Join(moduleRoot, "scripts", "run-cluster.sh"))
	if err != nil {
		t.Fatal(err)
	}
	rel, _ := filepath.Rel(moduleRoot, nginxTemplate)
	if !strings.Contains(string(script), rel) {
		t.Errorf("scripts/run-cluster.sh does not use %s", rel)
	}
	tmpl, _ := os.ReadFile(nginxTemplate)
	for k := range templatePlaceholders(string(tmpl)) {
		if !strings.Contains(string(script), k) {
			t.Errorf("scripts/run-cluster.sh does not fill %s", k)
		}
	}
}

func portOf(addr string) string {
	if i := strings.LastIndexByte(addr, ':'); i >= 0 {
		return addr[i+1:]
	}
	return addr
}

func keys[V any](m map[string]V) []string {
	return slices.Sorted(func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	})
}
