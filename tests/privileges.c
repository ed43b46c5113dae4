/* Run as a session (nbic run --script): what a session must NOT be able to do
 * to the host. Prints one "NAME: RESULT" line per check; the test judges them.
 * Nothing here can harm the host even where a check would fail: the module
 * image is garbage, the clock is set to the time just read, reboot is only
 * called after CAP_SYS_BOOT is seen to be absent and then with
 * LINUX_REBOOT_CMD_CAD_OFF, and /proc/sysrq-trigger is never opened. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/reboot.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#define CAP_SYS_MODULE 16
#define CAP_SYS_RAWIO 17
#define CAP_SYS_BOOT 22
#define CAP_SYS_RESOURCE 24
#define CAP_SYS_TIME 25
#define CAP_NET_ADMIN 12

static const char *outcome(long result) {
    static char text[64];
    if (result == 0)
        return "succeeded";
    snprintf(text, sizeof text, "%s", strerrorname_np(errno) ? strerrorname_np(errno) : "?");
    return text;
}

static uint64_t effective_capabilities(void) {
    char line[256];
    uint64_t caps = UINT64_MAX;
    FILE *status = fopen("/proc/self/status", "r");
    if (!status)
        return caps;
    while (fgets(line, sizeof line, status))
        if (strncmp(line, "CapEff:", 7) == 0)
            caps = strtoull(line + 7, NULL, 16);
    fclose(status);
    return caps;
}

int main(void) {
    uint64_t caps = effective_capabilities();
    printf("CapEff: %016llx\n", (unsigned long long)caps);

    static const char garbage[64] = "not a kernel module";
    printf("init_module: %s\n", outcome(syscall(SYS_init_module, garbage, sizeof garbage, "")));

    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    printf("clock_settime: %s\n", outcome(clock_settime(CLOCK_REALTIME, &now)));
    fflush(stdout);
    /* The shell's way, as a user would try it: prints date's own complaint. */
    int date_status = system("date -s \"$(date)\" >/dev/null");
    printf("date -s: exit %d\n", WEXITSTATUS(date_status));

    if (caps & (1ULL << CAP_SYS_BOOT)) {
        printf("reboot: not tried (CAP_SYS_BOOT is held)\n");
    } else {
        long rebooted = syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2,
                                LINUX_REBOOT_CMD_CAD_OFF, NULL);
        printf("reboot: %s\n", outcome(rebooted));
    }

    struct stat sysrq;
    if (stat("/proc/sysrq-trigger", &sysrq) != 0)
        printf("sysrq-trigger: %s\n", outcome(-1));
    else if (S_ISCHR(sysrq.st_mode) && sysrq.st_rdev == makedev(1, 3))
        printf("sysrq-trigger: /dev/null\n");
    else
        printf("sysrq-trigger: exposed\n");

    struct statvfs procsys;
    if (statvfs("/proc/sys", &procsys) != 0)
        printf("/proc/sys: %s\n", outcome(-1));
    else
        printf("/proc/sys: %s\n", procsys.f_flag & ST_RDONLY ? "read-only" : "writable");
    return 0;
}
