# overvisor-op: host.facts v1
Invoke-OvMain 'host.facts' {
    param($p)
    $h = Hyper-V\Get-VMHost
    $os = CimCmdlets\Get-CimInstance -ClassName Win32_OperatingSystem
    $cpus = @(CimCmdlets\Get-CimInstance -ClassName Win32_Processor)
    [ordered]@{
        name = $h.ComputerName
        logical_processors = [int]$h.LogicalProcessorCount
        memory_bytes = [int64]$h.MemoryCapacity
        memory_free_bytes = [int64]$os.FreePhysicalMemory * 1024
        cpu_model = [string]$cpus[0].Name
        cpu_mhz = [int]$cpus[0].MaxClockSpeed
        sockets = $cpus.Count
        cores_per_socket = [int]$cpus[0].NumberOfCores
        vm_path = $h.VirtualMachinePath
        vhd_path = $h.VirtualHardDiskPath
        os_version = $os.Version
        powershell_version = $PSVersionTable.PSVersion.ToString()
    }
}
