// Command vcsim runs the govmomi vSphere API simulator for liverecovery's tests.
//
// Debian ships the simulator library (golang-github-vmware-govmomi-dev, 0.24.2) but no vcsim
// command, so this small launcher builds one in GOPATH mode (scripts/build-vcsim.sh). It adds what
// 0.24.2 lacks and liverecovery calls: HostDatastoreSystem.RemoveDatastore, and the host mount entry
// of a NAS datastore (CreateNasDatastore leaves Datastore.host empty). For tests that need a step
// to fail inside vSphere, a host advanced option "vcsim.disableMethods.<moref>" disables methods
// of an object (see hostOptionManager).
//
// Flags choose the inventory: a vCenter with one standalone host and two local datastores by
// default (-standalone-host, -cluster, -host, -ds, -vm), or a standalone ESX host (-esx). Login
// accepts only -username / -password (default user / pass).
//
// It serves https on -l (default 127.0.0.1:0, a port the OS picks) with a fresh self-signed
// certificate, writes that certificate as PEM to -cert when given, then prints one line on stdout:
// the service URL, e.g. https://user:pass@127.0.0.1:41234/sdk. It runs until SIGINT or SIGTERM,
// then removes the temporary directories of the model's local datastores; with -exit-on-stdin-eof
// it also stops when its stdin closes, so a test runner that dies leaves no simulator behind.
//
// The simulator keeps a NAS datastore's files in the directory named by its localPath, relative
// to this process's working directory; nfs.go fills it from the real NFS export when a VM is
// registered there, as ESXi reads the VM folder over NFS.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// hostDatastoreSystem wraps the simulator's datastore system of one host. The simulator object is
// embedded by value: its property collector digs the mo.HostDatastoreSystem out of field 0.
type hostDatastoreSystem struct {
	simulator.HostDatastoreSystem
}

// CreateNasDatastore mounts as the simulator does, then records the host mount the way ESXi
// reports it (Datastore.host), which 0.24.2 leaves empty for NAS datastores.
func (dss *hostDatastoreSystem) CreateNasDatastore(ctx *simulator.Context, req *types.CreateNasDatastore) soap.HasFault {
	if err := mountNas(dss.Host.ConfigManager, req.Spec); err != nil {
		body := new(methods.CreateNasDatastoreBody)
		msg := fmt.Sprintf("NFS mount %s:%s failed: %s", req.Spec.RemoteHost, req.Spec.RemotePath, err)
		body.Fault_ = simulator.Fault(msg, &types.HostConfigFault{})
		return body
	}
	res := dss.HostDatastoreSystem.CreateNasDatastore(ctx, req)
	body, ok := res.(*methods.CreateNasDatastoreBody)
	if !ok || body.Res == nil {
		return res
	}
	if ds, ok := simulator.Map.Get(body.Res.Returnval).(*simulator.Datastore); ok {
		mode := req.Spec.AccessMode
		if mode == "" {
			mode = string(types.HostMountModeReadWrite)
		}
		ctx.WithLock(ds, func() {
			ds.Host = append(ds.Host, types.DatastoreHostMount{
				Key: dss.Host.Self,
				MountInfo: types.HostMountInfo{
					Path:       req.Spec.LocalPath,
					AccessMode: mode,
					Mounted:    types.NewBool(true),
					Accessible: types.NewBool(true),
				},
			})
		})
	}
	return res
}

// RemoveDatastore unmounts a datastore from this host, as ESXi's HostDatastoreSystem does: NotFound
// when the host does not mount it, ResourceInUse while a registered VM still lives on it. The
// datastore leaves the inventory once no host mounts it. Its files are left alone.
func (dss *hostDatastoreSystem) RemoveDatastore(ctx *simulator.Context, req *types.RemoveDatastore) soap.HasFault {
	body := new(methods.RemoveDatastoreBody)
	ref := req.Datastore

	ds, ok := simulator.Map.Get(ref).(*simulator.Datastore)
	if !ok || simulator.FindReference(dss.Datastore, ref) == nil {
		msg := fmt.Sprintf("datastore %s is not mounted on host %s", ref.Value, dss.Host.Name)
		body.Fault_ = simulator.Fault(msg, &types.NotFound{})
		return body
	}

	// The simulator's RelocateVM leaves stale entries in Datastore.vm, so ask each VM instead.
	for _, vmRef := range ds.Vm {
		vm, ok := simulator.Map.Get(vmRef).(*simulator.VirtualMachine)
		if ok && simulator.FindReference(vm.Datastore, ref) != nil {
			msg := fmt.Sprintf("datastore %s is in use by virtual machine %s", ds.Name, vm.Name)
			body.Fault_ = simulator.Fault(msg, &types.ResourceInUse{Type: "Datastore", Name: ds.Name})
			return body
		}
	}

	host := simulator.Map.Get(dss.Host.Self)
	simulator.RemoveReference(&dss.Datastore, ref) // dss is locked by the caller
	remaining := append([]types.ManagedObjectReference(nil), dss.Datastore...)
	ctx.WithLock(host, func() { dss.Host.Datastore = remaining })
	ctx.WithLock(ds, func() {
		for i := range ds.Host {
			if ds.Host[i].Key == dss.Host.Self {
				ds.Host = append(ds.Host[:i], ds.Host[i+1:]...)
				break
			}
		}
	})

	if cr := computeResource(dss.Host); cr != nil && !mountedByAny(cr.Host, ref) {
		simulator.Map.RemoveReference(simulator.Map.Get(cr.Self), &cr.Datastore, ref)
	}
	if !mountedByAny(hostRefs(), ref) {
		removeEntity(ctx, ds)
		if _, nas := ds.Info.(*types.NasDatastoreInfo); nas {
			forgetNasDirectory(ds.Info.GetDatastoreInfo().Url)
		}
	}

	body.Res = new(types.RemoveDatastoreResponse)
	return body
}

// computeResource is the compute resource (standalone or cluster) that holds host.
func computeResource(host *mo.HostSystem) *mo.ComputeResource {
	if host.Parent == nil {
		return nil
	}
	switch parent := simulator.Map.Get(*host.Parent).(type) {
	case *mo.ComputeResource:
		return parent
	case *simulator.ClusterComputeResource:
		return &parent.ComputeResource
	}
	return nil
}

func hostRefs() []types.ManagedObjectReference {
	var refs []types.ManagedObjectReference
	for _, e := range simulator.Map.All("HostSystem") {
		refs = append(refs, e.Reference())
	}
	return refs
}

func mountedByAny(hosts []types.ManagedObjectReference, ds types.ManagedObjectReference) bool {
	for _, ref := range hosts {
		if h, ok := simulator.Map.Get(ref).(*simulator.HostSystem); ok {
			if simulator.FindReference(h.Datastore, ds) != nil {
				return true
			}
		}
	}
	return false
}

// removeEntity takes a datastore out of its folder, its datacenter and the registry.
func removeEntity(ctx *simulator.Context, ds *simulator.Datastore) {
	ref := ds.Self
	for parent := ds.Parent; parent != nil; {
		obj := simulator.Map.Get(*parent)
		switch o := obj.(type) {
		case *simulator.Folder:
			if parent == ds.Parent {
				simulator.Map.RemoveReference(o, &o.ChildEntity, ref)
			}
		case *simulator.Datacenter:
			simulator.Map.RemoveReference(o, &o.Datastore, ref)
		}
		e, ok := obj.(mo.Entity)
		if !ok {
			break
		}
		parent = e.Entity().Parent
	}
	simulator.Map.Remove(ds.Browser)
	simulator.Map.Remove(ref)
}

// disableMethodsPrefix starts the keys of a test hook on hosts' advanced options:
// UpdateOptions with key "vcsim.disableMethods.VirtualMachine:vm-42" and value
// "PowerOnVM_Task,RelocateVM_Task" makes those methods of that object fail with MethodDisabled, as
// vCenter does for methods a solution disabled; an empty value enables them again. It lets tests
// make a step fail inside vSphere. (Entity.disabledMethod then lists the simulator's Go names.)
const disableMethodsPrefix = "vcsim.disableMethods."

// guestPrefix starts the keys of a second hook: key "vcsim.guest.VirtualMachine:vm-42" with value
// "192.0.2.20" makes that VM's guest report what VMware Tools report once a guest has booted
// (tools running, heartbeat green, that IP address), which 0.24.2 never does for a registered VM;
// an empty value makes it report no Tools again. It lets a test play the guest of a backup
// verification.
const guestPrefix = "vcsim.guest."

// setGuest makes vm's guest report Tools running with ip, or no Tools when ip is empty.
func setGuest(vm *simulator.VirtualMachine, ip string) {
	running := string(types.VirtualMachineToolsRunningStatusGuestToolsRunning)
	status := types.VirtualMachineToolsStatusToolsOk
	heartbeat := types.ManagedEntityStatusGreen
	if ip == "" {
		running = string(types.VirtualMachineToolsRunningStatusGuestToolsNotRunning)
		status = types.VirtualMachineToolsStatusToolsNotRunning
		heartbeat = types.ManagedEntityStatusGray
	}
	if vm.Guest == nil {
		vm.Guest = &types.GuestInfo{}
	}
	vm.Guest.ToolsRunningStatus, vm.Guest.ToolsStatus, vm.Guest.IpAddress = running, status, ip
	vm.GuestHeartbeatStatus = heartbeat
	vm.Summary.QuickStats.GuestHeartbeatStatus = heartbeat
	if vm.Summary.Guest == nil {
		vm.Summary.Guest = &types.VirtualMachineGuestSummary{}
	}
	vm.Summary.Guest.ToolsRunningStatus, vm.Summary.Guest.ToolsStatus = running, status
	vm.Summary.Guest.IpAddress = ip
}

// hostOptionManager wraps a host's advanced option manager (embedded by value) for the hooks.
type hostOptionManager struct {
	simulator.OptionManager
}

func (m *hostOptionManager) UpdateOptions(ctx *simulator.Context, req *types.UpdateOptions) soap.HasFault {
	var rest []types.BaseOptionValue
	for _, change := range req.ChangedValue {
		opt := change.GetOptionValue()
		if strings.HasPrefix(opt.Key, guestPrefix) {
			var ref types.ManagedObjectReference
			vm, ok := (*simulator.VirtualMachine)(nil), false
			if ref.FromString(strings.TrimPrefix(opt.Key, guestPrefix)) {
				vm, ok = simulator.Map.Get(ref).(*simulator.VirtualMachine)
			}
			if !ok {
				body := new(methods.UpdateOptionsBody)
				body.Fault_ = simulator.Fault("no such VM: "+opt.Key, &types.InvalidName{Name: opt.Key})
				return body
			}
			ip, _ := opt.Value.(string)
			ctx.WithLock(vm, func() { setGuest(vm, strings.TrimSpace(ip)) })
			continue
		}
		if !strings.HasPrefix(opt.Key, disableMethodsPrefix) {
			rest = append(rest, change)
			continue
		}
		var ref types.ManagedObjectReference
		var entity mo.Entity
		ok := false
		if ref.FromString(strings.TrimPrefix(opt.Key, disableMethodsPrefix)) {
			entity, ok = simulator.Map.Get(ref).(mo.Entity)
		}
		if !ok {
			body := new(methods.UpdateOptionsBody)
			body.Fault_ = simulator.Fault("no such entity: "+opt.Key, &types.InvalidName{Name: opt.Key})
			return body
		}
		var names []string
		value, _ := opt.Value.(string)
		for _, name := range strings.Split(value, ",") {
			if name = strings.TrimSpace(name); name != "" {
				// The simulator dispatches "Foo_Task" to its Go method "FooTask".
				names = append(names, strings.Replace(name, "_Task", "Task", 1))
			}
		}
		ctx.WithLock(entity, func() { entity.Entity().DisabledMethod = names })
	}
	req.ChangedValue = rest
	return m.OptionManager.UpdateOptions(req)
}

// wrapHostManagers replaces every host's datastore system and advanced option manager with the
// extended ones.
func wrapHostManagers() {
	for _, e := range simulator.Map.All("HostSystem") {
		host, ok := e.(*simulator.HostSystem)
		if !ok {
			continue
		}
		if ref := host.ConfigManager.DatastoreSystem; ref != nil {
			if dss, ok := simulator.Map.Get(*ref).(*simulator.HostDatastoreSystem); ok {
				simulator.Map.Put(&hostDatastoreSystem{*dss})
			}
		}
		if ref := host.ConfigManager.AdvancedOption; ref != nil {
			if om, ok := simulator.Map.Get(*ref).(*simulator.OptionManager); ok {
				simulator.Map.Put(&hostOptionManager{*om})
			}
		}
	}
}

// selfSignedTLS makes a fresh P-256 certificate for the listen address (Go's built-in test
// certificate has a 1024-bit RSA key, which OpenSSL's default security level rejects).
func selfSignedTLS(host string) (*tls.Config, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "vcsim", Organization: []string{"liverecovery tests"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
	}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else if host != "" {
		tmpl.DNSNames = append(tmpl.DNSNames, host)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	pemCert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}, pemCert, nil
}

func main() {
	listen := flag.String("l", "127.0.0.1:0", "listen address (port 0: the OS picks one)")
	certOut := flag.String("cert", "", "write the server's PEM certificate to this file")
	esx := flag.Bool("esx", false, "simulate a standalone ESX host instead of vCenter")
	hosts := flag.Int("standalone-host", 1, "standalone hosts per datacenter (vCenter model)")
	clusters := flag.Int("cluster", 0, "clusters per datacenter (vCenter model)")
	clusterHosts := flag.Int("host", 1, "hosts per cluster (vCenter model)")
	datastores := flag.Int("ds", 2, "local datastores (LocalDS_N), mounted on every host")
	vms := flag.Int("vm", 0, "VMs per resource pool")
	username := flag.String("username", "user", "the only user name Login accepts")
	password := flag.String("password", "pass", "the only password Login accepts")
	stdinEOF := flag.Bool("exit-on-stdin-eof", false, "also stop when stdin reaches EOF (the parent died)")
	flag.Parse()
	log.SetPrefix("vcsim: ")

	model := simulator.VPX()
	if *esx {
		model = simulator.ESX()
	} else {
		model.Host = *hosts
		model.Cluster = *clusters
		model.ClusterHost = *clusterHosts
	}
	model.Datastore = *datastores
	model.Machine = *vms
	model.Autostart = false

	if err := model.Create(); err != nil {
		log.Fatalf("create model: %s", err)
	}
	defer model.Remove()
	wrapHostManagers()

	host, _, err := net.SplitHostPort(*listen)
	if err != nil {
		log.Fatalf("-l %s: %s", *listen, err)
	}
	tlsConfig, pemCert, err := selfSignedTLS(host)
	if err != nil {
		log.Fatalf("certificate: %s", err)
	}
	if *certOut != "" {
		if err := os.WriteFile(*certOut, pemCert, 0o600); err != nil {
			log.Fatalf("-cert %s: %s", *certOut, err)
		}
	}
	model.Service.TLS = tlsConfig
	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*username, *password)}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	if *stdinEOF {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			stop <- syscall.SIGTERM
		}()
	}

	server := model.Service.NewServer()
	// No request has reached it yet: the URL is printed below.
	server.Config.Handler = registerHook(server.Config.Handler)
	fmt.Println(server.URL.String())

	<-stop
	server.Close()
}
