"""Multi-host lab on one machine: namespaces joined by veth pairs, the TC probe, traffic, faults."""
from migrator.tools.lab.faults import cpu_load
from migrator.tools.lab.topology import LabHost, attach_probe, detach_probe, get_host, lab_down, lab_status, lab_up
from migrator.tools.lab.traffic import TrafficProcess, TrafficResult, start_traffic

__all__ = ["LabHost", "lab_up", "lab_down", "lab_status", "get_host", "attach_probe", "detach_probe",
           "start_traffic", "TrafficProcess", "TrafficResult", "cpu_load"]
