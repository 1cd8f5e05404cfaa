// NAS datastores backed by a real NFS export.
//
// The simulator keeps a NAS datastore's files in the local directory named by its localPath and
// never talks NFS. ESXi, when asked to register a VM on an NFS datastore, reads the VM folder from
// the NFS server. To behave the same, this launcher mirrors the VM folder from the export into the
// datastore's directory at registration, through a real NFS client (libnfs-utils' nfs-ls and
// nfs-cp), before the simulator's own RegisterVM looks at it:
//
//   - every file except the -flat.vmdk extents is copied over NFS (the .vmx, descriptors,
//     .nvram); flat extents become sparse files of the size the server reports (ESXi reads the
//     descriptor and checks the extent's size; it reads no data at registration);
//   - vmware.log, which ESXi creates on the datastore when it registers a VM, is created on the
//     export over NFS when missing.
//
// It is on for a host once the host advanced option "vcsim.nfs.port" names the port of the test
// NFS server (NFS and MOUNT on that port: a loopback test server shares one listener, where ESXi
// would ask the portmapper on port 111). Without it the simulator behaves as before: the files
// must already be in the datastore's directory (the pyvmomi client's own tests place them). The
// mirror directories are removed when the datastore is unmounted.
package main

import (
	"bufio"
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// nfsPortOption is the host advanced option naming the test NFS server's port.
const nfsPortOption = "vcsim.nfs.port"

// nfsCommandTimeout bounds each nfs-ls / nfs-cp run: a hung server fails the registration.
const nfsCommandTimeout = 60 * time.Second

// mirrors remembers, per datastore directory, what this launcher made there.
var mirrors = struct {
	sync.Mutex
	createdDir map[string]bool     // localPath directories created at mount
	folders    map[string][]string // VM folders mirrored into each
}{createdDir: map[string]bool{}, folders: map[string][]string{}}

// mountNas does what ESXi does when it mounts an NFS export, for a host in NFS-backed mode: it
// reaches the server and lists the export's root (a failure fails the mount), then creates the
// datastore's local directory (ESXi needs none: the mount point is its own), remembering it was
// created here. Outside NFS-backed mode it does nothing.
func mountNas(host types.HostConfigManager, spec types.HostNasVolumeSpec) error {
	port := hostOption(host, nfsPortOption)
	if port == "" || spec.LocalPath == "" {
		return nil
	}
	root, err := exportURL(spec.RemoteHost, spec.RemotePath, port)
	if err != nil {
		return err
	}
	if _, err := runNfs("nfs-ls", root.String()); err != nil {
		return err
	}
	if _, err := os.Stat(spec.LocalPath); os.IsNotExist(err) {
		if err := os.MkdirAll(spec.LocalPath, 0o755); err != nil {
			return err
		}
		mirrors.Lock()
		mirrors.createdDir[spec.LocalPath] = true
		mirrors.Unlock()
	}
	return nil
}

// exportURL is the libnfs URL of a path on the test NFS server at port.
func exportURL(remoteHost, remotePath, port string) (*url.URL, error) {
	if _, err := strconv.Atoi(port); err != nil {
		return nil, fmt.Errorf("%s = %q is not a port", nfsPortOption, port)
	}
	return &url.URL{
		Scheme:   "nfs",
		Host:     remoteHost,
		Path:     remotePath,
		RawQuery: "nfsport=" + port + "&mountport=" + port + "&version=3",
	}, nil
}

// forgetNasDirectory removes what was mirrored into a NAS datastore's directory (and the
// directory itself when it was created at mount) once no host mounts the datastore.
func forgetNasDirectory(localPath string) {
	mirrors.Lock()
	defer mirrors.Unlock()
	for _, folder := range mirrors.folders[localPath] {
		_ = os.RemoveAll(folder)
	}
	delete(mirrors.folders, localPath)
	if mirrors.createdDir[localPath] {
		_ = os.Remove(localPath)
		delete(mirrors.createdDir, localPath)
	}
}

// registerHook sees each SOAP request before the simulator does and, for RegisterVM_Task,
// mirrors the VM folder first (the simulator's own Folder type cannot be wrapped: its methods
// assert their parents' concrete types). A mirror that fails is logged and the request goes on:
// the simulator then finds no .vmx and fails the registration (NotFound), as ESXi would.
func registerHook(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.Body != nil {
			body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
			_ = r.Body.Close()
			if err == nil && bytes.Contains(body, []byte("RegisterVM_Task")) {
				if req, ok := parseRegisterVM(body); ok {
					if err := mirrorForRegistration(req); err != nil {
						fmt.Fprintf(os.Stderr, "vcsim: register %s: %s\n", req.Path, err)
					}
				}
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		next.ServeHTTP(w, r)
	})
}

// parseRegisterVM finds the RegisterVM_Task request in a SOAP envelope.
func parseRegisterVM(body []byte) (*types.RegisterVM_Task, bool) {
	decoder := xml.NewDecoder(bytes.NewReader(body))
	for {
		token, err := decoder.Token()
		if err != nil {
			return nil, false
		}
		start, ok := token.(xml.StartElement)
		if !ok || start.Name.Local != "RegisterVM_Task" {
			continue
		}
		var req struct {
			Path string `xml:"path"`
			Name string `xml:"name"`
			Host *struct {
				Type  string `xml:"type,attr"`
				Value string `xml:",chardata"`
			} `xml:"host"`
		}
		if decoder.DecodeElement(&req, &start) != nil {
			return nil, false
		}
		out := &types.RegisterVM_Task{Path: req.Path, Name: strings.TrimSpace(req.Name)}
		if req.Host != nil {
			out.Host = &types.ManagedObjectReference{Type: req.Host.Type, Value: strings.TrimSpace(req.Host.Value)}
		}
		return out, true
	}
}

// mirrorForRegistration mirrors the folder of req.Path when its datastore is an NFS one.
func mirrorForRegistration(req *types.RegisterVM_Task) error {
	var p struct{ Datastore, Path string }
	if !strings.HasPrefix(req.Path, "[") || !strings.Contains(req.Path, "]") {
		return nil // the simulator reports the malformed path itself
	}
	end := strings.Index(req.Path, "]")
	p.Datastore = req.Path[1:end]
	p.Path = strings.TrimSpace(req.Path[end+1:])
	if req.Host == nil {
		return nil
	}
	host, ok := simulator.Map.Get(*req.Host).(*simulator.HostSystem)
	if !ok {
		return nil
	}
	var ds *simulator.Datastore
	for _, ref := range host.Datastore {
		if d, ok := simulator.Map.Get(ref).(*simulator.Datastore); ok && d.Name == p.Datastore {
			ds = d
		}
	}
	if ds == nil {
		return nil
	}
	nas, ok := ds.Info.(*types.NasDatastoreInfo)
	if !ok || nas.Nas == nil {
		return nil
	}
	port := hostOption(host.ConfigManager, nfsPortOption)
	if port == "" {
		return nil
	}
	folder := path.Dir(p.Path)
	local := filepath.Join(nas.Url, filepath.FromSlash(folder))
	remote, err := exportURL(nas.Nas.RemoteHost, path.Join(nas.Nas.RemotePath, folder), port)
	if err != nil {
		return err
	}
	if err := mirrorFolder(remote, local); err != nil {
		return err
	}
	// The simulator opens "<name>.nvram" at registration whatever the .vmx's nvram key names
	// (ESXi follows the key): a VM registered under another name than its files (a backup
	// verification's copy) needs one, so an empty one stands in.
	if req.Name != "" {
		nvram := filepath.Join(local, req.Name+".nvram")
		if _, err := os.Stat(nvram); os.IsNotExist(err) {
			if err := os.WriteFile(nvram, nil, 0o600); err != nil {
				return err
			}
		}
	}
	mirrors.Lock()
	mirrors.folders[nas.Url] = append(mirrors.folders[nas.Url], local)
	mirrors.Unlock()
	return nil
}

// hostOption is the value of one of a host's advanced options, or "".
func hostOption(cm types.HostConfigManager, key string) string {
	if cm.AdvancedOption == nil {
		return ""
	}
	var settings []types.BaseOptionValue
	switch m := simulator.Map.Get(*cm.AdvancedOption).(type) {
	case *hostOptionManager:
		settings = m.Setting
	case *simulator.OptionManager:
		settings = m.Setting
	}
	for _, s := range settings {
		if opt := s.GetOptionValue(); opt.Key == key {
			return fmt.Sprint(opt.Value)
		}
	}
	return ""
}

// fileURL is dir's URL with name appended to its path (the query kept).
func fileURL(dir *url.URL, name string) string {
	u := *dir
	u.Path = path.Join(dir.Path, name)
	return u.String()
}

func runNfs(args ...string) ([]byte, error) {
	cmd := exec.Command(args[0], args[1:]...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	done := make(chan struct{})
	var out []byte
	var err error
	go func() {
		out, err = cmd.Output()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(nfsCommandTimeout):
		if cmd.Process != nil {
			_ = cmd.Process.Kill()
		}
		<-done
		return nil, fmt.Errorf("%s timed out after %s", strings.Join(args, " "), nfsCommandTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

type remoteFile struct {
	name string
	size int64
}

// listFolder lists the regular files of a remote folder with nfs-ls ("-rw-r--r-- 1 0 0 123 name").
func listFolder(remote *url.URL) ([]remoteFile, error) {
	out, err := runNfs("nfs-ls", remote.String())
	if err != nil {
		return nil, err
	}
	var files []remoteFile
	scanner := bufio.NewScanner(bytes.NewReader(out))
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) < 6 || !strings.HasPrefix(fields[0], "-") {
			continue
		}
		size, err := strconv.ParseInt(fields[4], 10, 64)
		if err != nil {
			continue
		}
		files = append(files, remoteFile{name: strings.Join(fields[5:], " "), size: size})
	}
	return files, scanner.Err()
}

// mirrorFolder copies a remote VM folder into local, as described at the top of this file.
func mirrorFolder(remote *url.URL, local string) error {
	files, err := listFolder(remote)
	if err != nil {
		return err
	}
	hasLog := false
	for _, f := range files {
		hasLog = hasLog || f.name == "vmware.log"
	}
	if !hasLog {
		// ESXi creates vmware.log on the datastore when it registers the VM.
		if _, err := runNfs("nfs-cp", os.DevNull, fileURL(remote, "vmware.log")); err != nil {
			return err
		}
		files = append(files, remoteFile{name: "vmware.log"})
	}
	if err := os.MkdirAll(local, 0o755); err != nil {
		return err
	}
	for _, f := range files {
		target := filepath.Join(local, f.name)
		if strings.HasSuffix(strings.ToLower(f.name), "-flat.vmdk") {
			if err := sparseFile(target, f.size); err != nil {
				return err
			}
			continue
		}
		_ = os.Remove(target) // nfs-cp does not overwrite
		if _, err := runNfs("nfs-cp", fileURL(remote, f.name), target); err != nil {
			return err
		}
	}
	return nil
}

func sparseFile(name string, size int64) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Truncate(size)
}
