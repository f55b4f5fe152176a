package httpapi

import (
	"net/http"

	"github.com/kpd-dir/kpd"
)

// registerDevices registers the caller's device routes.
func (s *server) registerDevices() {
	s.handle(http.MethodGet, "/v1/devices", kpd.OpListDevices, s.listDevices)
	s.handle(http.MethodDelete, "/v1/devices/{device}", kpd.OpDeleteDevice, s.deleteDevice)
}

// devicesResponse is the body of GET /v1/devices.
type devicesResponse struct {
	Devices []kpd.DeviceInfo `json:"devices"`
}

// listDevices lists the caller's devices with their inventories.
func (s *server) listDevices(w http.ResponseWriter, r *request) error {
	devices, err := s.store.Devices(r.Context(), r.caller)
	if err != nil {
		return err
	}
	for i := range devices {
		devices[i].Suites = nonNil(devices[i].Suites)
	}
	return s.respond(w, r.Request, http.StatusOK, devicesResponse{Devices: nonNil(devices)})
}

// deleteDevice removes one of the caller's devices: 204, or 404 NotFound.
func (s *server) deleteDevice(w http.ResponseWriter, r *request) error {
	if err := s.store.DeleteDevice(r.Context(), r.caller, r.device); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// nonNil returns s, or an empty slice for nil, so that lists are sent as
// [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
