# overvisor-op: host.usage v1
# Usage counters for the graphs: the host's CPU load and memory; per VM
# Hyper-V's own CPU percentage, the memory assigned, and cumulative disk
# and network bytes (the raw values of Hyper-V's performance counters,
# matched to a VM by its disks' paths and its Id in the adapter's name).
Invoke-OvMain 'host.usage' {
    param($p)
    function Get-OvSum($items, [string]$property) {
        if ($items.Count -eq 0) { return $null }
        [int64]($items | Measure-Object -Property $property -Sum).Sum
    }
    $os = CimCmdlets\Get-CimInstance -ClassName Win32_OperatingSystem
    $load = CimCmdlets\Get-CimInstance -ClassName Win32_PerfFormattedData_PerfOS_Processor -Filter "Name='_Total'"
    $disks = @(CimCmdlets\Get-CimInstance -ClassName Win32_PerfRawData_Counters_HyperVVirtualStorageDevice -ErrorAction SilentlyContinue)
    $nics = @(CimCmdlets\Get-CimInstance -ClassName Win32_PerfRawData_NvspNicStats_HyperVVirtualNetworkAdapter -ErrorAction SilentlyContinue)
    $vms = @(Hyper-V\Get-VM | ForEach-Object {
        $id = $_.Id.ToString()
        $paths = @(Hyper-V\Get-VMHardDiskDrive -VM $_ | ForEach-Object { $_.Path -replace '\\', '-' })
        $d = @($disks | Where-Object { $paths -contains $_.Name })
        $n = @($nics | Where-Object { $_.Name -like "*$id*" })
        [ordered]@{
            id = $id; state = $_.State.ToString(); cpus = [int]$_.ProcessorCount
            cpu_percent = [double]$_.CPUUsage; memory_bytes = [int64]$_.MemoryAssigned
            disk_read_bytes = Get-OvSum $d 'ReadBytesPersec'
            disk_write_bytes = Get-OvSum $d 'WriteBytesPersec'
            net_rx_bytes = Get-OvSum $n 'BytesReceivedPersec'
            net_tx_bytes = Get-OvSum $n 'BytesSentPersec'
        }
    })
    [ordered]@{
        cpu_percent = [double]$load.PercentProcessorTime
        logical_processors = [int](Hyper-V\Get-VMHost).LogicalProcessorCount
        memory_total_bytes = [int64]$os.TotalVisibleMemorySize * 1024
        memory_free_bytes = [int64]$os.FreePhysicalMemory * 1024
        vms = $vms
    }
}
